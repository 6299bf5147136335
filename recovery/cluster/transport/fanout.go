package transport

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
)

// Named is anything with a node name: a Transport, or the cluster driver's
// own node type.
type Named interface {
	Name() string
}

// FanOut calls fn for every node, at most parallel at a time (parallel <= 0:
// all at once), in the order given, and returns every node's result keyed by
// its name: nil for success, fn's error otherwise. One node failing does not
// stop the others; cancelling ctx does: nodes not yet started are reported
// with a "not started" error wrapping ctx's, and the running ones see the
// cancelled ctx. A panic in fn is reported as that node's error. Names
// should be unique; errors of nodes sharing a name are joined.
func FanOut[T Named](ctx context.Context, nodes []T, parallel int, fn func(context.Context, T) error) map[string]error {
	if parallel <= 0 || parallel > len(nodes) {
		parallel = len(nodes)
	}
	results := make(map[string]error, len(nodes))
	var mu sync.Mutex
	record := func(name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if prev, seen := results[name]; seen {
			err = errors.Join(prev, err)
		}
		results[name] = err
	}

	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, n := range nodes {
		notStarted := func() { record(n.Name(), fmt.Errorf("%s: not started: %w", n.Name(), ctx.Err())) }
		select {
		case sem <- struct{}{}:
			if ctx.Err() != nil { // select picks at random when both are ready
				<-sem
				notStarted()
				continue
			}
		case <-ctx.Done():
			notStarted()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			record(n.Name(), call(ctx, fn, n))
		})
	}
	wg.Wait()
	return results
}

func call[T Named](ctx context.Context, fn func(context.Context, T) error, n T) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return fn(ctx, n)
}

// JoinErrors joins the errors of FanOut's results in node-name order (nil
// when every node succeeded), for callers that want one error.
func JoinErrors(results map[string]error) error {
	names := make([]string, 0, len(results))
	for name, err := range results {
		if err != nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	errs := make([]error, len(names))
	for i, name := range names {
		errs[i] = results[name]
	}
	return errors.Join(errs...)
}

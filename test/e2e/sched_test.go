package e2e

import (
	"flag"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The end-to-end tests are few and long (10 s to 6 min each under make
// test's load), and the package's wall time is set by when the longest
// ones start. go test releases its parallel tests in no particular order
// (all wait on one barrier), so in measured runs the two real-kubelet
// tests, five minutes each, often started after five minutes of shorter
// ones. parallel admits them longest first instead, at most -parallel at a
// time (go test's own limit is raised so that it never holds a test this
// scheduler would pick).

var sched struct {
	mu      sync.Mutex
	free    int // slots left; -parallel at the start
	opened  bool
	timer   *time.Timer
	waiting []*schedWaiter
}

type schedWaiter struct {
	cost  time.Duration
	ready chan struct{}
}

func TestMain(m *testing.M) {
	flag.Parse()
	sched.free = 4
	if f := flag.Lookup("test.parallel"); f != nil {
		if n, err := strconv.Atoi(f.Value.String()); err == nil && n > 0 {
			sched.free = n
		}
		_ = f.Value.Set("1000")
	}
	os.Exit(m.Run())
}

// parallel is t.Parallel, then a place among the running end-to-end tests,
// longest first. cost is what the test took under make test's load
// (docs/testing.md); only the order depends on it. The place is given back
// when the test and its subtests end.
func parallel(t *testing.T, cost time.Duration) {
	t.Parallel()
	w := &schedWaiter{cost: cost, ready: make(chan struct{})}
	sched.mu.Lock()
	sched.waiting = append(sched.waiting, w)
	switch {
	case sched.opened:
		admit()
	case sched.timer == nil:
		// Every parallel test leaves the barrier within milliseconds of
		// the others: wait that long for all of them to line up.
		sched.timer = time.AfterFunc(300*time.Millisecond, func() {
			sched.mu.Lock()
			sched.opened = true
			admit()
			sched.mu.Unlock()
		})
	}
	sched.mu.Unlock()
	<-w.ready
	t.Cleanup(func() {
		sched.mu.Lock()
		sched.free++
		admit()
		sched.mu.Unlock()
	})
}

// admit starts the longest waiting tests while places are free (sched.mu
// held).
func admit() {
	for sched.free > 0 && len(sched.waiting) > 0 {
		best := 0
		for i, w := range sched.waiting {
			if w.cost > sched.waiting[best].cost {
				best = i
			}
		}
		w := sched.waiting[best]
		sched.waiting = append(sched.waiting[:best], sched.waiting[best+1:]...)
		sched.free--
		close(w.ready)
	}
}

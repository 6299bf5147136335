package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type node string

func (n node) Name() string { return string(n) }

func nodeList(n int) []node {
	out := make([]node, n)
	for i := range out {
		out[i] = node(fmt.Sprintf("n%02d", i))
	}
	return out
}

func TestFanOutBound(t *testing.T) {
	tests := []struct {
		nodes, parallel, wantMax int
	}{
		{20, 1, 1},
		{20, 3, 3},
		{20, 0, 20},  // no bound
		{5, 50, 5},   // bound above the node count
		{0, 4, 0},    // nothing to do
		{7, -1, 7},   // negative: no bound
		{10, 10, 10}, // exactly
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d nodes, parallel %d", tt.nodes, tt.parallel), func(t *testing.T) {
			var active, maxActive atomic.Int32
			results := FanOut(context.Background(), nodeList(tt.nodes), tt.parallel, func(ctx context.Context, n node) error {
				now := active.Add(1)
				defer active.Add(-1)
				for {
					m := maxActive.Load()
					if now <= m || maxActive.CompareAndSwap(m, now) {
						break
					}
				}
				time.Sleep(30 * time.Millisecond)
				return nil
			})
			if got := int(maxActive.Load()); got != tt.wantMax {
				t.Errorf("max concurrency %d, want %d", got, tt.wantMax)
			}
			want := map[string]error{}
			for _, n := range nodeList(tt.nodes) {
				want[n.Name()] = nil
			}
			if diff := cmp.Diff(want, results); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
		})
	}
}

// errText makes results comparable with cmp.
func errText(results map[string]error) map[string]string {
	out := map[string]string{}
	for k, err := range results {
		out[k] = ""
		if err != nil {
			out[k] = err.Error()
		}
	}
	return out
}

func TestFanOutReportsEveryError(t *testing.T) {
	results := FanOut(context.Background(), nodeList(6), 2, func(ctx context.Context, n node) error {
		switch n {
		case "n01", "n04":
			return fmt.Errorf("%s: broken", n)
		case "n05":
			panic("boom")
		}
		return nil
	})
	got := errText(results)
	if !strings.HasPrefix(got["n05"], "panic: boom") {
		t.Errorf("n05: %q, want the panic reported", got["n05"])
	}
	got["n05"] = "panic"
	want := map[string]string{"n00": "", "n01": "n01: broken", "n02": "", "n03": "", "n04": "n04: broken", "n05": "panic"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	joined := JoinErrors(results)
	if joined == nil || !strings.HasPrefix(joined.Error(), "n01: broken\nn04: broken\npanic: boom") {
		t.Errorf("JoinErrors = %v", joined)
	}
	if err := JoinErrors(map[string]error{"a": nil}); err != nil {
		t.Errorf("JoinErrors of successes = %v", err)
	}
}

// TestFanOutCancel: cancelling stops nodes not yet started (each reported),
// the running ones see the cancellation, and FanOut returns promptly.
func TestFanOutCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var started sync.Map
	results := FanOut(ctx, nodeList(10), 2, func(ctx context.Context, n node) error {
		started.Store(n, true)
		if n == "n01" {
			cancel()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: stopped: %w", n, ctx.Err())
		case <-time.After(10 * time.Second):
			return errors.New("not stopped")
		}
	})
	if len(results) != 10 {
		t.Fatalf("%d results, want 10: %v", len(results), results)
	}
	for _, n := range nodeList(10) {
		err := results[n.Name()]
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", n, err)
		}
		if _, ran := started.Load(n); !ran && !strings.Contains(fmt.Sprint(err), n.Name()+": not started") {
			t.Errorf("%s never started but reported %v", n, err)
		}
	}
	if _, ran := started.Load(node("n09")); ran {
		t.Errorf("n09 started after the cancellation")
	}
}

func TestFanOutDuplicateNames(t *testing.T) {
	results := FanOut(context.Background(), []node{"a", "a"}, 1, func(ctx context.Context, n node) error {
		return errors.New("failed")
	})
	if got := fmt.Sprint(results["a"]); got != "failed\nfailed" {
		t.Errorf("duplicate names: %q, want both errors joined", got)
	}
}

// TestFanOutOverTransports: the way the cluster driver uses the package —
// nodes over real SSH and local, in parallel, output through PrefixWriters
// onto one writer — every line arrives whole and prefixed.
func TestFanOutOverTransports(t *testing.T) {
	trs := transports(t)
	trs = append(trs, NewLocal("local-2"))
	var out lockedBuffer
	results := FanOut(context.Background(), trs, 2, func(ctx context.Context, tr Transport) error {
		stdout, stderr := PrefixWriter(&out, tr.Name()+": "), PrefixWriter(&out, tr.Name()+": ")
		defer stdout.Close()
		defer stderr.Close()
		return tr.Run(ctx, []string{"sh", "-c", `i=0; while [ $i -lt 200 ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); done; exit 4`}, stdout, stderr)
	})
	for _, tr := range trs {
		var exit *ExitError
		if !errors.As(results[tr.Name()], &exit) || exit.Code != 4 || exit.Node != tr.Name() {
			t.Errorf("%s: %v, want exit 4 from that node", tr.Name(), results[tr.Name()])
		}
	}
	count := map[string]int{}
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		name, rest, ok := strings.Cut(line, ": ")
		var kind string
		var i int
		if _, err := fmt.Sscanf(rest, "%s %d", &kind, &i); !ok || err != nil || (kind != "line" && kind != "err") {
			t.Fatalf("mangled line %q", line)
		}
		count[name]++
	}
	want := map[string]int{}
	for _, tr := range trs {
		want[tr.Name()] = 400
	}
	if diff := cmp.Diff(want, count); diff != "" {
		t.Errorf("lines per node (-want +got):\n%s", diff)
	}
}

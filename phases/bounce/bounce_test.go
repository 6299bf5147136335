package bounce

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/runtime"
)

// data is the part of pipeline.Data that cycleManifest uses.
type data struct {
	pipeline.Data
	n   *node.Node
	out bytes.Buffer
}

func (d *data) Node() *node.Node       { return d.n }
func (d *data) Cluster() *node.Cluster { return nil }
func (d *data) Out() io.Writer         { return &d.out }
func (d *data) manifest(comp string) string {
	return d.n.Path("/etc/kubernetes/manifests/" + comp + ".yaml")
}

// kubelet plays the two kubelets the manifests method meets: one that
// stops a static pod when its manifest goes away, and one that cannot
// reach the API server and keeps it ("sources aren't ready").
type kubelet struct {
	d        *data
	honours  bool
	mu       sync.Mutex
	stopped  bool
	stops    int
	sawGrace time.Duration
}

func (k *kubelet) ControlPlane(context.Context) ([]runtime.Container, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := os.Stat(k.d.manifest("kube-apiserver")); k.honours && os.IsNotExist(err) {
		k.stopped = true
	}
	return []runtime.Container{{ID: "old", Name: "kube-apiserver", Running: !k.stopped}}, nil
}

func (k *kubelet) Stop(_ context.Context, id string, grace time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped, k.sawGrace = true, grace
	k.stops++
	return nil
}

func (k *kubelet) Remove(context.Context, string) error { return nil }
func (k *kubelet) Close() error                         { return nil }

func newData(t *testing.T) *data {
	root := t.TempDir()
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	d := &data{n: n}
	if err := os.MkdirAll(filepath.Dir(d.manifest("x")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.manifest("kube-apiserver"), []byte("kind: Pod\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCycleManifestKubeletStopsThePod(t *testing.T) {
	d := newData(t)
	k := &kubelet{d: d, honours: true}
	forced, err := cycleManifest(context.Background(), d, k, "kube-apiserver", "old", &pipeline.Live{ManifestWait: time.Minute})
	if err != nil || forced || k.stops != 0 {
		t.Fatalf("forced=%v err=%v stops=%d: the kubelet stopped it, kubecpr must not", forced, err, k.stops)
	}
	assertBackInPlace(t, d)
}

func TestCycleManifestKubeletKeepsThePod(t *testing.T) {
	d := newData(t)
	k := &kubelet{d: d}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	forced, err := cycleManifest(ctx, d, k, "kube-apiserver", "old", &pipeline.Live{ManifestWait: 300 * time.Millisecond, Grace: 7 * time.Second})
	if err != nil || !forced || k.stops != 1 || k.sawGrace != 7*time.Second {
		t.Fatalf("forced=%v err=%v stops=%d grace=%s: want one stop through the runtime with the grace", forced, err, k.stops, k.sawGrace)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("stopped after %s, before --manifest-wait", waited)
	}
	if !strings.Contains(d.out.String(), "sources aren't ready") || !strings.Contains(d.out.String(), "through the runtime") {
		t.Errorf("no explanation in the output:\n%s", d.out.String())
	}
	assertBackInPlace(t, d)
}

// A deadline that ends before the kubelet (or kubecpr) stops the pod puts
// the manifest back and says which component.
func TestCycleManifestTimeoutPutsTheManifestBack(t *testing.T) {
	d := newData(t)
	k := &kubelet{d: d}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := cycleManifest(ctx, d, k, "kube-apiserver", "old", &pipeline.Live{ManifestWait: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "did not stop kube-apiserver") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(d.manifest("kube-apiserver")); err != nil {
		t.Fatalf("manifest not put back: %v", err)
	}
}

func assertBackInPlace(t *testing.T, d *data) {
	t.Helper()
	if b, err := os.ReadFile(d.manifest("kube-apiserver")); err != nil || string(b) != "kind: Pod\n" {
		t.Errorf("manifest not back as it was: %q %v", b, err)
	}
	if _, err := os.Stat(d.n.Path(HoldingDir)); !os.IsNotExist(err) {
		t.Errorf("holding directory left: %v", err)
	}
}

// The container that failed at once is the one whose log is shown, even
// while the old one is still writing its graceful shutdown.
func TestLogTailSincePrefersNewContainers(t *testing.T) {
	d := newData(t)
	dir := d.n.Path("/var/log/pods/kube-system_kube-apiserver-cp-1_uid/kube-apiserver")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	oldLog, newLog := filepath.Join(dir, "0.log"), filepath.Join(dir, "1.log")
	os.WriteFile(oldLog, []byte("serving\n"), 0o644)
	before := logFiles(d.n, "kube-apiserver")
	os.WriteFile(newLog, []byte("Error: unknown flag: --no-such-flag\n"), 0o644)
	os.WriteFile(oldLog, []byte("serving\nshutting down: connection refused\n"), 0o644) // written last
	later := time.Now().Add(time.Second)
	os.Chtimes(oldLog, later, later)
	if got := LogTailSince(d.n, "kube-apiserver", 5, before); !strings.Contains(got, "unknown flag") {
		t.Errorf("LogTailSince = %q, want the new container's log", got)
	}
	if got := LogTail(d.n, "kube-apiserver", 5); !strings.Contains(got, "shutting down") {
		t.Errorf("LogTail = %q, want the most recently written log", got)
	}
}

func TestStopGraceLeavesRoomForTheReplacement(t *testing.T) {
	for _, tc := range []struct {
		grace, timeout, want time.Duration
	}{
		{0, 5 * time.Minute, 30 * time.Second},
		{0, 25 * time.Second, 12500 * time.Millisecond},
		{5 * time.Second, 25 * time.Second, 5 * time.Second},
		{0, 0, 30 * time.Second},
	} {
		if got := stopGrace(&pipeline.Live{Grace: tc.grace}, tc.timeout); got != tc.want {
			t.Errorf("stopGrace(%s, %s) = %s, want %s", tc.grace, tc.timeout, got, tc.want)
		}
	}
}

// A container created after every renewed file was written (a component
// the kubelet restarted on its own during the run) is kept; anything
// written after it, a file or a rename into a directory, means a restart.
func TestRunsOnRenewedFiles(t *testing.T) {
	d := newData(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	write := func(p string, at time.Time) {
		t.Helper()
		h := d.n.Path(p)
		if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(h, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(h, at, at); err != nil {
			t.Fatal(err)
		}
	}
	setDirs := func(at time.Time) {
		t.Helper()
		for _, p := range []string{"/etc/kubernetes", "/etc/kubernetes/pki", "/etc/kubernetes/pki/etcd"} {
			if err := os.Chtimes(d.n.Path(p), at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("/etc/kubernetes/pki/apiserver.crt", base)
	write("/etc/kubernetes/pki/etcd/server.crt", base.Add(time.Second))
	write("/etc/kubernetes/admin.conf", base.Add(2*time.Second))
	setDirs(base)
	running := runtime.Container{ID: "c1", Name: "kube-apiserver", Running: true}

	c := running
	c.Created = base.Add(3 * time.Second)
	if kept, renewed := runsOnRenewedFiles(d, c); !kept || !renewed.Equal(base.Add(2*time.Second)) {
		t.Errorf("created after every write: kept %v, renewed %s, want kept, renewed at admin.conf's time", kept, renewed)
	}
	for name, c := range map[string]runtime.Container{
		"created before admin.conf": {ID: "c1", Running: true, Created: base.Add(1500 * time.Millisecond)},
		"not running":               {ID: "c1", Running: false, Created: base.Add(time.Hour)},
		"no creation time":          {ID: "c1", Running: true},
		"no container":              {},
	} {
		if kept, _ := runsOnRenewedFiles(d, c); kept {
			t.Errorf("%s: kept", name)
		}
	}
	// A renewed file renamed into pki/etcd later: the file keeps the time
	// it was written, the directory gets the time of the rename.
	write("/etc/kubernetes/pki/etcd/peer.crt", base)
	if err := os.Chtimes(d.n.Path("/etc/kubernetes/pki/etcd"), base.Add(5*time.Second), base.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	c.Created = base.Add(4 * time.Second)
	if kept, _ := runsOnRenewedFiles(d, c); kept {
		t.Error("a rename into pki/etcd after the container was created: kept")
	}
	// No PKI directory: nothing proven.
	if err := os.RemoveAll(d.n.Path("/etc/kubernetes/pki")); err != nil {
		t.Fatal(err)
	}
	c.Created = base.Add(time.Hour)
	if kept, _ := runsOnRenewedFiles(d, c); kept {
		t.Error("without a PKI directory: kept")
	}
}

// An etcd member whose metrics port says it has no leader is stopped with
// noLeaderGrace; one with a leader, one that does not answer, and any
// other component keep the grace they had.
func TestLeaderlessGrace(t *testing.T) {
	d := newData(t)
	health := `{"health":"false","reason":"RAFT NO LEADER"}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, health)
	}))
	defer srv.Close()
	manifest := func(metrics string) {
		t.Helper()
		m := "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: etcd\n    command:\n    - etcd\n    - --listen-metrics-urls=" + metrics + "\n"
		if err := os.WriteFile(d.manifest("etcd"), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	manifest(srv.URL)
	if g, why := leaderlessGrace(ctx, d, "etcd", 30*time.Second); g != noLeaderGrace || !strings.Contains(why, "RAFT NO LEADER") {
		t.Errorf("no leader: grace %s (%q), want %s", g, why, noLeaderGrace)
	}
	if g, why := leaderlessGrace(ctx, d, "kube-apiserver", 30*time.Second); g != 30*time.Second || why != "" {
		t.Errorf("kube-apiserver: grace %s (%q)", g, why)
	}
	health = `{"health":"true","reason":""}`
	if g, why := leaderlessGrace(ctx, d, "etcd", 30*time.Second); g != 30*time.Second || why != "" {
		t.Errorf("a leader: grace %s (%q)", g, why)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // takes connections, never answers
	manifest("http://" + l.Addr().String())
	if g, why := leaderlessGrace(ctx, d, "etcd", 30*time.Second); g != 30*time.Second || why != "" {
		t.Errorf("no answer: grace %s (%q)", g, why)
	}
}

// A component whose new containers keep exiting is named as crash-looping
// (with the kubelet's back-off), not as merely slow; containers from
// before kubecpr acted, the one it stopped, and other components do not
// count.
func TestCrashLoopNote(t *testing.T) {
	since := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return since.Add(time.Duration(s) * time.Second) }
	cs := []runtime.Container{
		{ID: "before", Name: "kube-apiserver", Created: at(-60)},
		{ID: "stopped", Name: "kube-apiserver", Created: at(-30)},
		{ID: "a", Name: "kube-apiserver", Created: at(5)},
		{ID: "b", Name: "kube-apiserver", Created: at(50)},
		{ID: "c", Name: "kube-apiserver", Created: at(95), Running: true},
		{ID: "e", Name: "etcd", Created: at(10)},
	}
	note := crashLoopNote(cs, "kube-apiserver", "stopped", since)
	for _, want := range []string{"2 of the 3 kube-apiserver containers", "started 04:00:50 UTC", "back-off", "RBAC bootstrap", "--component-timeout on resume"} {
		if !strings.Contains(note, want) {
			t.Errorf("note lacks %q: %q", want, note)
		}
	}
	if got := crashLoopNote(append(cs, runtime.Container{ID: "e2", Name: "etcd", Created: at(20)}), "etcd", "", since); !strings.Contains(got, "2 of the 2 etcd containers") || strings.Contains(got, "RBAC") {
		t.Errorf("etcd's note: %q", got)
	}
	if got := crashLoopNote(cs[4:5], "kube-apiserver", "stopped", since); got != "" {
		t.Errorf("one running container is not a crash loop: %q", got)
	}
	if got := crashLoopNote(cs[:2], "kube-apiserver", "stopped", since); got != "" {
		t.Errorf("containers from before kubecpr acted count: %q", got)
	}
	err := &ComponentError{Component: "kube-apiserver", Err: context.DeadlineExceeded, CrashLoop: note, Logs: "x"}
	if msg := err.Error(); !strings.Contains(msg, "did not come back") || !strings.Contains(msg, "\n"+note+"\nlast lines of its log:") {
		t.Errorf("the error does not carry the note before the log:\n%s", msg)
	}
}

// listing is a runtime whose control plane is a fixed list.
type listing []runtime.Container

func (l listing) ControlPlane(context.Context) ([]runtime.Container, error) { return l, nil }
func (l listing) Stop(context.Context, string, time.Duration) error         { return nil }
func (l listing) Remove(context.Context, string) error                      { return nil }
func (l listing) Close() error                                              { return nil }

// The kubelet started a new container that exited before it could be seen
// running (a component that fails at once): it counts as started, so the
// error that follows is about the component, not about the kubelet. The
// stopped container, or an exited one from before kubecpr acted, does not
// count.
func TestWaitNewContainerCountsOneThatAlreadyExited(t *testing.T) {
	since := time.Now()
	old := runtime.Container{ID: "old", Name: "kube-apiserver", Created: since.Add(-time.Minute)}
	exited := runtime.Container{ID: "new", Name: "kube-apiserver", Created: since.Add(2 * time.Second)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	id, err := waitNewContainer(ctx, listing{old, exited}, "kube-apiserver", "old", since)
	if err != nil || id != "new" {
		t.Fatalf("got %q, %v; want the exited new container", id, err)
	}
	for name, l := range map[string]listing{
		"only the stopped one":      {old},
		"an exited one from before": {{ID: "older", Name: "kube-apiserver", Created: since.Add(-time.Second)}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
		if id, err := waitNewContainer(ctx, l, "kube-apiserver", "old", since); err == nil {
			t.Errorf("%s: counted %q as the new container", name, id)
		}
		cancel()
	}
	running := runtime.Container{ID: "run", Name: "kube-apiserver", Created: since.Add(-time.Second), Running: true}
	if id, err := waitNewContainer(ctx, listing{old, running}, "kube-apiserver", "old", since); err != nil || id != "run" {
		t.Errorf("a running container other than the stopped one: got %q, %v", id, err)
	}
}

// failing is a runtime that cannot list its containers.
type failing struct{ listing }

func (failing) ControlPlane(context.Context) ([]runtime.Container, error) {
	return nil, errors.New("listing containers on /run/containerd/containerd.sock: connection refused")
}

// When the runtime never answered, the timeout says why the new container
// was not seen, not only that time ran out.
func TestWaitNewContainerSaysTheRuntimeFailed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, err := waitNewContainer(ctx, failing{}, "kube-apiserver", "old", time.Now())
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "could not list the containers: listing containers on /run/containerd/containerd.sock: connection refused") {
		t.Fatalf("err = %v", err)
	}
}

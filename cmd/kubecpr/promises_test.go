package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
)

// lifetimes returns each certificate's lifetime from the clock now.
func lifetimes(t *testing.T, root string) map[string]time.Duration {
	t.Helper()
	n, err := node.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := n.Discover("")
	inv, err := inventory.Build(n, c, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Duration{}
	for _, it := range inv.Items {
		if it.Cert != nil && it.Kind != inventory.KindKubeletServing {
			out[it.Name] = it.Cert.NotAfter.Sub(now)
		}
	}
	return out
}

func currentRun(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "var/lib/kubecpr/current"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestResumeUsesTheRunsOptions: a run killed half-way is resumed with no
// options and does what the interrupted run would have done.
func TestResumeUsesTheRunsOptions(t *testing.T) {
	root := expiredNode(t)
	args := rootArgs(root, "run", "--until", "kubeconfigs", "--validity", "48h", "--update-user-kubeconfigs")
	r := kubecpr(t, []string{"KUBECPR_CRASH_AFTER_RECORD=8"}, args...)
	if !r.killed {
		t.Fatalf("the run was not killed: exit %d\n%s", r.code, r.stdout)
	}
	// Another value for a recorded option is refused before any change.
	before := snapshot(t, root)
	r = kubecpr(t, nil, rootArgs(root, "resume", "--validity", "8760h")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "--validity") {
		t.Errorf("resume --validity 8760h: exit %d, want %d naming --validity\n%s", r.code, ExitPrecondition, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--rotate-keys")...); r.code != ExitPrecondition || !strings.Contains(r.stderr, "rotate-keys") {
		t.Errorf("run --rotate-keys on the open run: exit %d, want %d\n%s", r.code, ExitPrecondition, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--new-run")...); r.code != ExitPrecondition || !strings.Contains(r.stderr, "still open") {
		t.Errorf("run --new-run on the open run: exit %d, want %d\n%s", r.code, ExitPrecondition, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("refused commands changed the node:\n%s", d)
	}
	// The same value spelled differently is the same option.
	r = kubecpr(t, nil, rootArgs(root, "resume", "--validity", "48h0m0s")...)
	if r.code != 0 {
		t.Fatalf("resume: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for name, life := range lifetimes(t, root) {
		if life != 48*time.Hour {
			t.Errorf("%s: lifetime %s after resume, want the run's 48h", name, life)
		}
	}
	// --update-user-kubeconfigs was recorded: the user's config is renewed
	// and the stages stopped where the run said (--until kubeconfigs).
	if r := kubecpr(t, nil, rootArgs(root, "--warn", "24h", "check")...); r.code != 0 {
		t.Errorf("check after resume: exit %d\n%s", r.code, r.stdout)
	}
	if strings.Contains(r.stdout, "] bounce:") {
		t.Errorf("resume ran stages beyond the run's --until kubeconfigs:\n%s", r.stdout)
	}
}

// TestLostJournalIsNotTrusted: a run whose journal vanished or lost its
// last records is not rolled back "successfully" while the node stays
// renewed; backup restore is the documented way out.
func TestLostJournalIsNotTrusted(t *testing.T) {
	t.Run("deleted", func(t *testing.T) {
		root := expiredNode(t)
		before := snapshot(t, root)
		if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
			t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
		}
		id := currentRun(t, root)
		if err := os.Remove(filepath.Join(root, "var/lib/kubecpr/runs", id, "journal.log")); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"status", "rollback", "resume"} {
			r := kubecpr(t, nil, rootArgs(root, cmd)...)
			if r.code != ExitJournal || !strings.Contains(r.stderr, "backup restore "+id+" --prune") {
				t.Errorf("%s with the journal deleted: exit %d, want %d and the way out\n%s%s", cmd, r.code, ExitJournal, r.stdout, r.stderr)
			}
		}
		r := kubecpr(t, nil, rootArgs(root, "backup", "restore", id, "--prune")...)
		if r.code != 0 || !strings.Contains(r.stdout, "closed") {
			t.Fatalf("backup restore: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if d := diffSnapshots(before, snapshot(t, root)); d != "" {
			t.Errorf("after backup restore the node differs from before the run:\n%s", d)
		}
		if r := kubecpr(t, nil, rootArgs(root, "status")...); r.code != 0 {
			t.Errorf("status after the way out: exit %d\n%s", r.code, r.stderr)
		}
		if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code != 0 {
			t.Errorf("a new run after the way out: exit %d\n%s", r.code, r.stderr)
		}
	})
	t.Run("cut at a record boundary", func(t *testing.T) {
		root := expiredNode(t)
		if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
			t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
		}
		jp := filepath.Join(root, "var/lib/kubecpr/runs", currentRun(t, root), "journal.log")
		b, err := os.ReadFile(jp)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitAfter(string(b), "\n")
		if err := os.WriteFile(jp, []byte(strings.Join(lines[:len(lines)/2], "")), 0o600); err != nil {
			t.Fatal(err)
		}
		r := kubecpr(t, nil, rootArgs(root, "rollback")...)
		if r.code == 0 || !strings.Contains(r.stderr, "still differ from the backup") {
			t.Fatalf("rollback with half a journal: exit %d, want a failure naming what differs\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
}

// TestTokenUserLeftAlone: a user kubeconfig trusting the cluster but
// authenticating with a token is not a certificate: listed as such, never
// renewed, never an error.
func TestTokenUserLeftAlone(t *testing.T) {
	root := expiredNode(t)
	admin, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := node.ParseKubeconfig("admin.conf", admin)
	if err != nil {
		t.Fatal(err)
	}
	k.User.ClientCertificateData, k.User.ClientKeyData, k.User.Token = nil, nil, "not-a-real-token"
	out, err := clientcmdWrite(k)
	if err != nil {
		t.Fatal(err)
	}
	alice := filepath.Join(root, "home/alice/.kube/config")
	if err := os.MkdirAll(filepath.Dir(alice), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alice, out, 0o600); err != nil {
		t.Fatal(err)
	}
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run with a token user: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if b, _ := os.ReadFile(alice); string(b) != string(out) {
		t.Error("the token user's kubeconfig was changed")
	}
	r = kubecpr(t, nil, rootArgs(root, "check")...)
	if r.code != 0 || !strings.Contains(r.stdout, "/home/alice/.kube/config authenticates with a bearer token") {
		t.Errorf("check: exit %d, want 0 and a note on the token user\n%s", r.code, r.stdout)
	}
}

// TestSkippedIsNotDone: on a copy, the live stages are shown and journaled
// as skipped, and the end says what is left to do on the live node.
func TestSkippedIsNotDone(t *testing.T) {
	root := expiredNode(t)
	r := kubecpr(t, nil, rootArgs(root, "run", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"- skipped: would restart the kubelet", "left to do on the live node", "the skipped stages above are not done"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "✓ would") {
		t.Errorf("a skipped action is shown as done:\n%s", r.stdout)
	}
	recs := journalRecords(t, root)
	skipped := 0
	for _, rec := range recs {
		if rec.Data["skipped"] != "" {
			skipped++
		}
	}
	if skipped != 2 {
		t.Errorf("%d records journal a skip, want 2 (bounce, csr)", skipped)
	}
}

func TestBadValidityAndClock(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	for _, v := range []string{"-24h", "1s", "59m"} {
		if r := kubecpr(t, nil, rootArgs(root, "run", "--validity", v)...); r.code != ExitFailed || !strings.Contains(r.stderr, "--validity") {
			t.Errorf("--validity %s: exit %d, want %d\n%s", v, r.code, ExitFailed, r.stderr)
		}
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("refused runs changed the node:\n%s", d)
	}
}

func clientcmdWrite(k *node.Kubeconfig) ([]byte, error) { return clientcmd.Write(*k.Config) }

// TestSmallTraps: a regular file where the kubelet keeps its link, setuid
// and setgid bits through a rollback, a broken service-account key pair.
func TestSmallTraps(t *testing.T) {
	t.Run("regular kubelet pem", func(t *testing.T) {
		root := expiredNode(t)
		cur := filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")
		target, err := os.Readlink(cur)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(root, target)) // `cp -L`, inside the node
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(cur); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cur, b, 0o600); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, root)
		if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
			t.Fatalf("run with a regular kubelet-client-current.pem: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if st, err := os.Lstat(cur); err != nil || !st.Mode().IsRegular() {
			t.Errorf("kubelet-client-current.pem is no longer a regular file: %v %v", st, err)
		}
		if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
			t.Errorf("check: exit %d\n%s", r.code, r.stdout)
		}
		if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
			t.Fatalf("rollback: exit %d\n%s", r.code, r.stderr)
		}
		if d := diffSnapshots(before, snapshot(t, root)); d != "" {
			t.Fatalf("rollback not byte-identical:\n%s", d)
		}
	})
	t.Run("setgid kept", func(t *testing.T) {
		root := expiredNode(t)
		p := filepath.Join(root, "etc/kubernetes/pki/apiserver.crt")
		if err := os.Chmod(p, 0o640|os.ModeSetgid); err != nil {
			t.Fatal(err)
		}
		if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
			t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
		}
		if st, _ := os.Stat(p); st.Mode()&os.ModeSetgid == 0 {
			t.Errorf("renewal lost setgid: %v", st.Mode())
		}
		if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
			t.Fatalf("rollback: exit %d\n%s", r.code, r.stderr)
		}
		if st, _ := os.Stat(p); st.Mode()&os.ModeSetgid == 0 || st.Mode().Perm() != 0o640 {
			t.Errorf("rollback lost the mode: %v", st.Mode())
		}
	})
	t.Run("sa key mismatch", func(t *testing.T) {
		root := expiredNode(t)
		other := expiredNode(t)
		b, err := os.ReadFile(filepath.Join(other, "etc/kubernetes/pki/sa.pub"))
		if err != nil {
			t.Fatal(err)
		}
		pub := filepath.Join(root, "etc/kubernetes/pki/sa.pub")
		if orig, _ := os.ReadFile(pub); string(orig) == string(b) {
			t.Skip("the key pool gave both nodes the same service-account key")
		}
		if err := os.WriteFile(pub, b, 0o644); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, root)
		r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
		if r.code != ExitPrecondition || !strings.Contains(r.stderr, "sa.pub does not match") {
			t.Errorf("sa.pub of another cluster: exit %d, want %d\n%s", r.code, ExitPrecondition, r.stderr)
		}
		if d := diffSnapshots(before, snapshot(t, root)); d != "" {
			t.Fatalf("a refused run changed the node:\n%s", d)
		}
	})
}

// TestNoDialAtExit: a run that never needed the container runtime does not
// dial it on the way out (a socket that accepts and never answers made
// every such run wait 10 s at exit). The socket never answers; after the
// run, no connection may be waiting in its queue.
func TestNoDialAtExit(t *testing.T) {
	root := expiredNode(t)
	sock := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--cri-socket", sock, "--kubelet-restart-command", "true")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	// Nothing accepted while the run ran: a connection it made waits in
	// the listen queue, and is taken now.
	if err := l.(*net.UnixListener).SetDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if c, err := l.Accept(); err == nil {
		c.Close()
		t.Error("a run that never needed the runtime connected to its socket")
	}
}

// TestStrayTempsAndEveryRun: a temporary file an interrupted atomic write
// left beside its target is removed when the run is opened again; status
// lists every run recorded, not only the current one.
func TestStrayTempsAndEveryRun(t *testing.T) {
	root := expiredNode(t)
	// Killed after the intent of the first certificate (apiserver).
	r := kubecpr(t, []string{"KUBECPR_CRASH_AFTER_RECORD=11"}, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if !r.killed {
		t.Fatalf("not killed: exit %d", r.code)
	}
	stray := filepath.Join(root, "etc/kubernetes/pki/.apiserver.crt.kubecpr-123456")
	if err := os.WriteFile(stray, []byte("half a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 || !strings.Contains(r.stdout, "temporary file left by an interrupted write") {
		t.Fatalf("resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("the stray temporary file is still there: %v", err)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s", r.code, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "certs")...); r.code != 0 {
		t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, "status")...)
	if r.code != 0 || !strings.Contains(r.stdout, "rolled-back") || !strings.Contains(r.stdout, "runs recorded here") {
		t.Errorf("status does not list every run:\n%s", r.stdout)
	}
}

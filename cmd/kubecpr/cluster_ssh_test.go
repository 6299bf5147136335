package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
)

// sshInventory rewrites a root: inventory so that every node is reached
// through the real sshd of srv (the remote kubecpr runs with --root set to
// the node's directory, so nothing touches this machine's own /).
func sshInventory(t testing.TB, invFile string, srv *sshtest.Server, knownHosts string) string {
	t.Helper()
	b, err := os.ReadFile(invFile)
	if err != nil {
		t.Fatal(err)
	}
	ssh := fmt.Sprintf("ssh: {user: %s, host: %s, port: %d, identityFile: %s, knownHosts: %s}, root:", srv.User, srv.Host, srv.Port, srv.IdentityFile, knownHosts)
	out := regexp.MustCompile(`root:`).ReplaceAllString(string(b), ssh)
	f := filepath.Join(t.TempDir(), "ssh-inventory.yaml")
	if err := os.WriteFile(f, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestClusterOverSSH drives the cluster through a real OpenSSH sshd on
// loopback with per-test host keys: kubecpr copies itself to each node,
// runs the node pipeline there, streams the output back; rollback puts
// every node back byte for byte. An unknown host key is refused before
// any change.
func TestClusterOverSSH(t *testing.T) {
	t.Parallel() // processes and trees of its own
	srv := sshtest.Start(t)
	dir := t.TempDir()
	invFile, roots := expiredClusterOf(t, dir, 2, 1)
	before := map[string]map[string]string{}
	for name, root := range roots {
		before[name] = snapshot(t, root)
	}
	driver := t.TempDir()
	clock := now.Format(time.RFC3339)

	empty := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := kubecpr(t, nil, "cluster", "run", "--inventory", sshInventory(t, invFile, srv, empty), "--ca-from", "cp-1",
		"--root", driver, "--now", clock)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "cp-1") || !strings.Contains(r.stderr, "ssh-keyscan") {
		t.Fatalf("unknown host key: exit %d, want %d naming the node and how to add the key\n%s%s", r.code, ExitPrecondition, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Fatalf("a refused cluster run changed %s:\n%s", name, d)
		}
	}

	// A node that does not answer: refused before any change, named.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	unreachable := strings.Replace(string(mustRead(t, sshInventory(t, invFile, srv, srv.KnownHostsFile))), fmt.Sprintf("port: %d", srv.Port), fmt.Sprintf("port: %d", port), 1)
	uf := filepath.Join(t.TempDir(), "unreachable.yaml")
	if err := os.WriteFile(uf, []byte(unreachable), 0o600); err != nil {
		t.Fatal(err)
	}
	r = kubecpr(t, nil, "cluster", "run", "--inventory", uf, "--ca-from", "cp-1", "--root", driver, "--now", clock)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "cp-1") {
		t.Fatalf("an unreachable node: exit %d, want %d naming cp-1\n%s%s", r.code, ExitPrecondition, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Fatalf("a refused cluster run changed %s:\n%s", name, d)
		}
	}

	// --ca-from needs a local tree: the CA is read from cp-1's copy here,
	// as on a control-plane node that drives its own cluster.
	inv := sshInventory(t, invFile, srv, srv.KnownHostsFile)
	// The plan copies kubecpr to every node; the run then finds the same
	// binary (sha256) there and copies nothing, except to the node whose
	// copy differs.
	r = kubecpr(t, nil, "cluster", "plan", "--inventory", inv, "--root", roots["cp-1"], "--now", clock)
	if r.code != 0 || strings.Contains(r.stdout, "[cp-1] kubecpr already at") {
		// (cp-2 and w-1 got their copy in the run refused above for cp-1.)
		t.Fatalf("cluster plan over ssh: exit %d (want 0 and cp-1, never reached before, copied)\n%s%s", r.code, r.stdout, r.stderr)
	}
	stale := filepath.Join(roots["cp-2"], "var/lib/kubecpr/bin/kubecpr")
	f, err := os.OpenFile(stale, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r = kubecpr(t, nil, "cluster", "run", "--inventory", inv, "--update-user-kubeconfigs", "--root", roots["cp-1"], "--now", clock)
	if r.code != 0 {
		t.Fatalf("cluster run over ssh: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, name := range []string{"cp-1", "w-1"} {
		if !strings.Contains(r.stdout, "["+name+"] kubecpr already at") {
			t.Errorf("%s: kubecpr copied again although the same binary was there:\n%s", name, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "[cp-2] kubecpr already at") {
		t.Errorf("cp-2's copy differs (a byte appended) but was not copied again:\n%s", r.stdout)
	}
	if got, want := mustRead(t, stale), mustRead(t, kubecprBin(t)); string(got) != string(want) {
		t.Errorf("cp-2's kubecpr after the run: %d bytes, want the driver's %d", len(got), len(want))
	}
	for _, want := range []string{"[cp-1] ", "[cp-2] ", "[w-1] ", "install the kubelet client certificate"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	checkClusterRecovered(t, roots)
	r = kubecpr(t, nil, "cluster", "rollback", "--root", roots["cp-1"], "--now", clock)
	if r.code != 0 {
		t.Fatalf("cluster rollback over ssh: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Errorf("rollback over ssh: %s not byte-identical:\n%s", name, d)
		}
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

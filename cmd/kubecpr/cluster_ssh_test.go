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
	r = kubecpr(t, nil, "cluster", "run", "--inventory", inv, "--update-user-kubeconfigs", "--root", roots["cp-1"], "--now", clock)
	if r.code != 0 {
		t.Fatalf("cluster run over ssh: exit %d\n%s%s", r.code, r.stdout, r.stderr)
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

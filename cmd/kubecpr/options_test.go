package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/test/fixture"
)

func TestRotateKeys(t *testing.T) {
	root := expiredNode(t)
	before := identities(t, root, true)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--rotate-keys", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: %d\n%s", r.code, r.stderr)
	}
	after := identities(t, root, true)
	for name, b := range before {
		if name == "kubelet.crt" {
			continue // the kubelet's own serving key stays
		}
		if after[name].PublicKey == b.PublicKey {
			t.Errorf("%s: key not rotated", name)
		}
		if after[name].Subject != b.Subject {
			t.Errorf("%s: subject changed", name)
		}
	}
	if st, _ := os.Stat(filepath.Join(root, "etc/kubernetes/pki/apiserver.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("new key mode %v", st.Mode().Perm())
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check: %d\n%s", r.code, r.stdout)
	}
}

func TestMigrateOrganizations(t *testing.T) {
	// a node laid out before kubeadm 1.29: admin.conf is O=system:masters
	root := expiredNode(t, func(o *fixture.Options) { o.PreKubeadm129 = true })
	if got := identities(t, root, false)["admin.conf"].Subject; got != "CN=kubernetes-admin,O=system:masters" {
		t.Fatalf("fixture admin.conf %q", got)
	}
	// without the flag the organisation is kept
	plain := expiredNode(t, func(o *fixture.Options) { o.PreKubeadm129 = true })
	if r := kubecpr(t, nil, rootArgs(plain, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: %d\n%s", r.code, r.stderr)
	}
	if got := identities(t, plain, false)["admin.conf"].Subject; got != "CN=kubernetes-admin,O=system:masters" {
		t.Errorf("without --migrate-organizations: admin.conf %q", got)
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--migrate-organizations", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: %d\n%s", r.code, r.stderr)
	}
	if got := identities(t, root, false)["admin.conf"].Subject; got != "CN=kubernetes-admin,O=kubeadm:cluster-admins" {
		t.Errorf("admin.conf subject %q", got)
	}
}

func TestRenewWithinOnlyTouchesExpiring(t *testing.T) {
	// leaves valid for 6 more months, the kubelet client cert for 5 days
	root := expiredNode(t, func(o *fixture.Options) {
		o.Leaf.NotAfter = now.AddDate(0, 6, 0)
		o.KubeletClient.NotAfter = now.AddDate(0, 0, 5)
	})
	r := kubecpr(t, nil, rootArgs(root, "plan", "--renew-within", "720h")...)
	if r.code != 0 {
		t.Fatalf("plan: %d %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "renew kubelet-client-current.pem") || strings.Contains(r.stdout, "renew apiserver") {
		t.Fatalf("plan with --renew-within 720h:\n%s", r.stdout)
	}
}

func TestBackupCommands(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: %d\n%s", r.code, r.stderr)
	}
	list := kubecpr(t, nil, rootArgs(root, "backup", "list")...)
	id := strings.Fields(list.stdout)[0]
	if r := kubecpr(t, nil, rootArgs(root, "backup", "verify", id)...); r.code != 0 || !strings.Contains(r.stdout, "matches") {
		t.Fatalf("verify: %d %s%s", r.code, r.stdout, r.stderr)
	}
	// the backup restores the node outside the journal too.
	if r := kubecpr(t, nil, rootArgs(root, "backup", "restore", "--prune", id)...); r.code != 0 {
		t.Fatalf("restore: %d %s", r.code, r.stderr)
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Fatalf("restore not byte-identical:\n%s", diff)
	}
	// a damaged backup is refused
	blob := filepath.Join(root, "var/lib/kubecpr/backups", id, "files/etc/kubernetes/pki/ca.crt")
	b, _ := os.ReadFile(blob)
	b[10] ^= 1
	os.WriteFile(blob, b, 0o600)
	if r := kubecpr(t, nil, rootArgs(root, "backup", "verify", id)...); r.code == 0 || !strings.Contains(r.stderr, "/etc/kubernetes/pki/ca.crt") {
		t.Fatalf("verify of a damaged backup: %d %s", r.code, r.stderr)
	}
}

// The kubelet's current pem was written in the same second as the run's
// clock: the rotated file gets the next free name, the old one is kept.
func TestKubeletPEMNameCollision(t *testing.T) {
	root := expiredNode(t, func(o *fixture.Options) {
		o.KubeletClient = fixture.Window{NotBefore: now, NotAfter: now.AddDate(0, 0, 3)}
	})
	oldName := "/var/lib/kubelet/pki/" + fixture.KubeletPEMName(now)
	if got, _ := os.Readlink(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")); got != oldName {
		t.Fatalf("fixture link %q", got)
	}
	oldBytes, _ := os.ReadFile(filepath.Join(root, oldName))
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--renew-within", "720h", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: %d\n%s", r.code, r.stderr)
	}
	got, _ := os.Readlink(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	if got == oldName || got != "/var/lib/kubelet/pki/"+fixture.KubeletPEMName(now.Add(time.Second)) {
		t.Fatalf("link -> %q", got)
	}
	if b, _ := os.ReadFile(filepath.Join(root, oldName)); string(b) != string(oldBytes) {
		t.Fatal("the previous pem was overwritten")
	}
}

// A completed run can still be rolled back, once.
func TestRollbackOfACompletedRun(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--update-user-kubeconfigs")...); r.code != 0 || !strings.Contains(r.stdout, "finished on this copy") {
		t.Fatalf("run: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: %d\n%s", r.code, r.stderr)
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Fatalf("not byte-identical:\n%s", diff)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); !strings.Contains(r.stdout, "nothing to roll back") {
		t.Fatalf("second rollback: %s", r.stdout)
	}
	// and the next run is a new one
	if r := kubecpr(t, nil, rootArgs(root, "run", "--update-user-kubeconfigs")...); r.code != 0 || strings.Contains(r.stdout, "continuing") {
		t.Fatalf("run after rollback: %d\n%s", r.code, r.stdout)
	}
}

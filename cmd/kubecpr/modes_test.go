package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// A certificate with setuid (chmod 4755, as an operator's mistake or a
// hardening script leaves it) comes back 4755 after rollback and after
// `backup restore --prune`, and a mode that differs is printed as chmod
// spells it (issue 19 item 6: rollback exited 6 "mode 493, was 8389101",
// and restore said restored while leaving 0755: chown after the write
// cleared setuid and nothing checked the result).
func TestSetuidModeSurvivesRollbackAndRestore(t *testing.T) {
	root := expiredNode(t)
	crt := filepath.Join(root, "etc/kubernetes/pki/apiserver.crt")
	if err := os.Chmod(crt, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	mode := func() os.FileMode {
		st, err := os.Lstat(crt)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode()
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if m := mode(); m != 0o755|os.ModeSetuid {
		t.Errorf("after rollback apiserver.crt is %v, want -rwsr-xr-x", m)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}

	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
	}
	id := regexp.MustCompile(`\b\d{8}T\d{6}Z-[0-9a-f]+\b`).FindString(r.stdout + r.stderr)
	if id == "" {
		t.Fatalf("no run id in the output:\n%s", r.stdout)
	}
	r = kubecpr(t, nil, rootArgs(root, "backup", "restore", id, "--prune")...)
	if r.code != 0 {
		t.Fatalf("backup restore: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if m := mode(); m != 0o755|os.ModeSetuid {
		t.Errorf("after backup restore apiserver.crt is %v, want -rwsr-xr-x", m)
	}
	if !strings.Contains(r.stdout, "checked against the backup") {
		t.Errorf("restore does not say it checked its result:\n%s", r.stdout)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("backup restore not byte-identical:\n%s", d)
	}
}

// What a kill -9 leaves between creating a temporary and renaming it —
// ReplaceSymlink's link, the state's `current` and a backup's manifest —
// is swept by the next command that opens the run, so a rollback ends
// with nothing of kubecpr's left (issue 19 item 7: the link survived every
// later rollback, and the state's temporaries were never swept).
func TestKilledWritesLeaveNoTemporaries(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	id := regexp.MustCompile(`\b\d{8}T\d{6}Z-[0-9a-f]+\b`).FindString(r.stdout + r.stderr)
	state := filepath.Join(root, "var/lib/kubecpr")
	left := []string{
		filepath.Join(root, "var/lib/kubelet/pki/.kubelet-client-current.pem.kubecpr-link-4242"),
		filepath.Join(state, ".current.kubecpr-77"),
		filepath.Join(state, "backups", id, ".manifest.json.kubecpr-5"),
	}
	if err := os.Symlink("kubelet-client-2020.pem", left[0]); err != nil {
		t.Fatal(err)
	}
	for _, f := range left[1:] {
		if err := os.WriteFile(f, []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, f := range left {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s is still there after the rollback (%v)", f, err)
		}
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

// A node without /var/lib/kubelet: the run creates /var/lib/kubelet and
// /var/lib/kubelet/pki; one rollback removes both, children first (issue
// 19 item 11: the first rollback exited with "directory not empty" and
// each directory level needed one more rollback).
func TestRollbackRemovesCreatedDirectoriesInOneGo(t *testing.T) {
	root := expiredNode(t)
	if err := os.RemoveAll(filepath.Join(root, "var/lib/kubelet")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/kubelet/pki")); err != nil {
		t.Fatalf("the run did not create /var/lib/kubelet/pki: %v", err)
	}
	r := kubecpr(t, nil, rootArgs(root, "rollback")...)
	if r.code != 0 || strings.Contains(r.stderr, "not empty") {
		t.Fatalf("rollback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(root, "var/lib/kubelet")); !os.IsNotExist(err) {
		t.Errorf("/var/lib/kubelet is still there after one rollback (%v)", err)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

// A kubeconfig whose client-certificate is relative (admin-client.crt
// beside admin.conf) is read, renewed and rolled back where kubectl reads
// it: relative to the kubeconfig's directory (issue 19 item 5: it was
// resolved from /, check said missing and run created N/admin-client.crt
// while the real file stayed expired).
func TestRelativeClientCertificateInKubeconfig(t *testing.T) {
	root := expiredNode(t)
	conf := filepath.Join(root, "etc/kubernetes/admin.conf")
	cfg, err := clientcmd.LoadFromFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	ai := cfg.AuthInfos[cfg.Contexts[cfg.CurrentContext].AuthInfo]
	crt, key := filepath.Join(root, "etc/kubernetes/admin-client.crt"), filepath.Join(root, "etc/kubernetes/admin-client.key")
	if err := os.WriteFile(crt, ai.ClientCertificateData, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, ai.ClientKeyData, 0o600); err != nil {
		t.Fatal(err)
	}
	ai.ClientCertificateData, ai.ClientKeyData = nil, nil
	ai.ClientCertificate, ai.ClientKey = "admin-client.crt", "admin-client.key"
	if err := clientcmd.WriteToFile(*cfg, conf); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(crt)
	before := snapshot(t, root)

	r := kubecpr(t, nil, rootArgs(root, "check")...)
	if strings.Contains(r.stdout+r.stderr, "missing") {
		t.Errorf("check calls the relative client certificate missing:\n%s%s", r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(root, "admin-client.crt")); !os.IsNotExist(err) {
		t.Errorf("the run created admin-client.crt at the root of the node (%v)", err)
	}
	renewed, _ := os.ReadFile(crt)
	c, err := pki.ParseCertificate(renewed)
	if err != nil || bytes.Equal(old, renewed) || !c.NotAfter.After(time.Now().Add(300*24*time.Hour)) {
		t.Errorf("etc/kubernetes/admin-client.crt not renewed (err %v, same bytes %v)", err, bytes.Equal(old, renewed))
	}
	// check reads the renewed file (the user's ~/.kube/config stays
	// expired: no --update-user-kubeconfigs).
	if r := kubecpr(t, nil, rootArgs(root, "check")...); !regexp.MustCompile(`(?m)^admin\.conf .* ok$`).MatchString(r.stdout) {
		t.Errorf("check after the run does not show admin.conf ok:\n%s", r.stdout)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s", r.code, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

// Issue 18: a kubeadm node whose three CAs expired three days ago, ten
// years after they were made, along with every leaf. Without --renew-ca
// the run is refused before any change and says to add it; --renew-ca=NAME
// renews only that one (the others still refuse); with --renew-ca the run
// re-issues each CA with its own key, renews every leaf from it, and puts
// the new CA certificate in every kubeconfig that trusted the old one;
// `check` is then clean, and rollback is byte-identical.
func TestRenewCAOnAnExpiredNode(t *testing.T) {
	root := expiredNode(t, func(o *fixture.Options) {
		o.CA = fixture.Window{NotBefore: now.AddDate(-10, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	})
	before := snapshot(t, root)
	oldCAs := map[string]*x509.Certificate{}
	caFiles := map[string]string{"ca": "etc/kubernetes/pki/ca.crt", "front-proxy-ca": "etc/kubernetes/pki/front-proxy-ca.crt", "etcd-ca": "etc/kubernetes/pki/etcd/ca.crt"}
	for name, f := range caFiles {
		c, err := fixture.ReadCert(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		oldCAs[name] = c
	}

	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "--renew-ca") || !strings.Contains(r.stderr, "nothing was changed") {
		t.Fatalf("expired CAs without --renew-ca: exit %d, want %d naming --renew-ca\n%s", r.code, ExitPrecondition, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, "plan", "--renew-ca=etcd-ca")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "the ca CA") {
		t.Fatalf("--renew-ca=etcd-ca with the cluster CA expired too: exit %d, want %d naming the ca CA\n%s%s", r.code, ExitPrecondition, r.stdout, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, "plan", "--renew-ca=kubernetes")...)
	if r.code != ExitFailed || !strings.Contains(r.stderr, "ca, front-proxy-ca, etcd-ca") {
		t.Fatalf("--renew-ca=kubernetes: exit %d, want %d listing the CA names\n%s", r.code, ExitFailed, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("refused runs changed the node:\n%s", d)
	}

	// Flags in any position: --renew-ca alone, after the command.
	r = kubecpr(t, nil, rootArgs(root, "plan", "--renew-ca")...)
	if r.code != 0 {
		t.Fatalf("plan --renew-ca: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"re-issue the ca CA certificate", "re-issue the front-proxy-ca CA certificate", "re-issue the etcd-ca CA certificate",
		"put the current ca CA certificate in /etc/kubernetes/kubelet.conf in place of its older copy"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("plan lacks %q:\n%s", want, r.stdout)
		}
	}
	r = kubecpr(t, nil, rootArgs(root, "run", "--renew-ca", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run --renew-ca: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Errorf("check after the run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	newCAs := map[string]*x509.Certificate{}
	for name, f := range caFiles {
		c, err := fixture.ReadCert(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		newCAs[name] = c
		old := oldCAs[name]
		if !bytes.Equal(c.RawSubject, old.RawSubject) || !bytes.Equal(c.SubjectKeyId, old.SubjectKeyId) || pki.PublicKeyPin(c) != pki.PublicKeyPin(old) {
			t.Errorf("%s: subject, key id or key changed", name)
		}
		if c.SerialNumber.Cmp(old.SerialNumber) == 0 || !now.Before(c.NotAfter) || c.NotAfter.Sub(now) < 9*365*24*60*60*1e9 {
			t.Errorf("%s: serial %s, until %s: want a new serial and ten years", name, c.SerialNumber, c.NotAfter)
		}
	}
	pool := func(c *x509.Certificate) *x509.CertPool { p := x509.NewCertPool(); p.AddCert(c); return p }
	for leaf, ca := range map[string]string{"etc/kubernetes/pki/apiserver.crt": "ca", "etc/kubernetes/pki/front-proxy-client.crt": "front-proxy-ca",
		"etc/kubernetes/pki/etcd/server.crt": "etcd-ca", "etc/kubernetes/pki/apiserver-etcd-client.crt": "etcd-ca"} {
		c, err := fixture.ReadCert(filepath.Join(root, leaf))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool(newCAs[ca]), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s does not chain to the renewed %s: %v", leaf, ca, err)
		}
	}
	caPEM, _ := os.ReadFile(filepath.Join(root, caFiles["ca"]))
	for _, kc := range []string{"etc/kubernetes/admin.conf", "etc/kubernetes/super-admin.conf", "etc/kubernetes/controller-manager.conf",
		"etc/kubernetes/scheduler.conf", "etc/kubernetes/kubelet.conf", "root/.kube/config"} {
		cfg, err := clientcmd.LoadFromFile(filepath.Join(root, kc))
		if err != nil {
			t.Fatal(err)
		}
		for name, cl := range cfg.Clusters {
			if !bytes.Equal(cl.CertificateAuthorityData, caPEM) {
				t.Errorf("%s: cluster %s does not hold the renewed CA certificate", kc, name)
			}
		}
	}
	r = kubecpr(t, nil, rootArgs(root, "rollback")...)
	if r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

// Issue 18 across a cluster (two control planes, one worker, trees on this
// machine): `cluster run --renew-ca` re-issues each expired CA once, on the
// driving node, and every node installs that same certificate: the control
// planes' CA files, the worker's pki/ca.crt and kubelet.conf; every node is
// then clean by `check` and chains to it; `cluster rollback` puts every
// node back byte for byte.
func TestClusterRenewCA(t *testing.T) {
	dir := t.TempDir()
	inv, roots := expiredClusterOf(t, dir, 2, 1, func(o *fixture.Options) {
		o.CA = fixture.Window{NotBefore: now.AddDate(-10, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	})
	before := map[string]map[string]string{}
	for name, root := range roots {
		before[name] = snapshot(t, root)
	}
	clock := []string{"--now", now.Format("2006-01-02T15:04:05Z")}
	r := kubecpr(t, nil, append([]string{"cluster", "run", "--inventory", inv, "--root", roots["cp-1"]}, clock...)...)
	if r.code != ExitStageFailed && r.code != ExitPrecondition || !strings.Contains(r.stderr+r.stdout, "--renew-ca") {
		t.Fatalf("cluster run without --renew-ca on expired CAs: exit %d, want a refusal naming --renew-ca\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Fatalf("%s changed by a refused run:\n%s", name, d)
		}
	}
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "the cluster run is closed") {
		t.Errorf("a cluster run every node refused: exit %d, want %d saying the run is closed\n%s", r.code, ExitPrecondition, r.stderr)
	}
	// Closed: a cluster rollback has nothing to undo and changes nothing.
	r = kubecpr(t, nil, append([]string{"cluster", "rollback", "--root", roots["cp-1"]}, clock...)...)
	if r.code != 0 {
		t.Fatalf("cluster rollback after a refused run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Fatalf("%s changed by the rollback of a refused run:\n%s", name, d)
		}
	}
	r = kubecpr(t, nil, append([]string{"cluster", "plan", "--renew-ca", "--inventory", inv, "--root", roots["cp-1"]}, clock...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "would re-issue the etcd-ca CA certificate") {
		t.Fatalf("cluster plan --renew-ca: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(roots["cp-1"], "var/lib/kubecpr/cluster/ca")); err == nil {
		t.Error("cluster plan wrote the re-issued CAs")
	}
	r = kubecpr(t, nil, append([]string{"cluster", "run", "--renew-ca", "--update-user-kubeconfigs", "--inventory", inv, "--root", roots["cp-1"]}, clock...)...)
	if r.code != 0 {
		t.Fatalf("cluster run --renew-ca: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	want := mustRead(t, filepath.Join(roots["cp-1"], "var/lib/kubecpr/cluster/ca/ca.crt"))
	newCA, err := pki.ParseCertificate(want)
	if err != nil {
		t.Fatal(err)
	}
	for name, root := range roots {
		if got := mustRead(t, filepath.Join(root, "etc/kubernetes/pki/ca.crt")); !bytes.Equal(got, want) {
			t.Errorf("%s: pki/ca.crt is not the cluster's re-issued CA certificate", name)
		}
		cfg, err := clientcmd.LoadFromFile(filepath.Join(root, "etc/kubernetes/kubelet.conf"))
		if err != nil {
			t.Fatal(err)
		}
		for cn, cl := range cfg.Clusters {
			if !bytes.Equal(cl.CertificateAuthorityData, want) {
				t.Errorf("%s: kubelet.conf cluster %s does not trust the re-issued CA certificate", name, cn)
			}
		}
		if !strings.HasPrefix(name, "w-") {
			for _, ca := range []string{"front-proxy-ca", "etcd/ca"} {
				a := mustRead(t, filepath.Join(root, "etc/kubernetes/pki", ca+".crt"))
				b := mustRead(t, filepath.Join(roots["cp-1"], "etc/kubernetes/pki", ca+".crt"))
				if !bytes.Equal(a, b) {
					t.Errorf("%s: %s.crt differs from cp-1's: each CA must be re-issued once for the cluster", name, ca)
				}
			}
		}
	}
	if !now.Before(newCA.NotAfter) {
		t.Errorf("the re-issued CA ends %s", newCA.NotAfter)
	}
	checkClusterRecovered(t, roots)
	r = kubecpr(t, nil, append([]string{"cluster", "rollback", "--root", roots["cp-1"]}, clock...)...)
	if r.code != 0 {
		t.Fatalf("cluster rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for name, root := range roots {
		if d := diffSnapshots(before[name], snapshot(t, root)); d != "" {
			t.Errorf("%s: not byte-identical after the rollback:\n%s", name, d)
		}
	}
}

// A second cluster run after a completed one (next year's renewal; here
// the --renew-ca run after a recovery, found on test/kubeadmbed): every
// worker's node run of the first stayed open (it ran --until bounce), and
// the second was refused on each worker as "open and started with other
// options". Now the worker's run ends with its verify stage, complete.
func TestSecondClusterRunAfterACompletedOne(t *testing.T) {
	dir := t.TempDir()
	inv, roots := expiredClusterOf(t, dir, 1, 1)
	clock := []string{"--now", now.Format("2006-01-02T15:04:05Z")}
	for i, extra := range [][]string{nil, {"--renew-ca=ca"}} {
		r := kubecpr(t, nil, append(append([]string{"cluster", "run", "--update-user-kubeconfigs", "--inventory", inv, "--root", roots["cp-1"]}, clock...), extra...)...)
		if r.code != 0 {
			t.Fatalf("cluster run %d: exit %d\n%s%s", i+1, r.code, r.stdout, r.stderr)
		}
	}
	checkClusterRecovered(t, roots)
}

// --renew-ca on a node whose /etc/kubernetes is a symlink (to a directory
// on another disk, as operators move it): the trust copies under it are
// found and replaced at the target, the run holds the node's tree, and
// rollback is byte-identical.
func TestRenewCAWithSymlinkedKubernetesDir(t *testing.T) {
	root := expiredNode(t, func(o *fixture.Options) {
		o.CA = fixture.Window{NotBefore: now.AddDate(-10, 0, -3), NotAfter: now.AddDate(0, 0, -3)}
	})
	linkKubernetesDir(t, root)
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--renew-ca", "--update-user-kubeconfigs")...)
	if r.code != 0 || !strings.Contains(r.stdout, "put the current ca CA certificate in /srv-kubernetes/kubelet.conf") {
		t.Fatalf("run --renew-ca with /etc/kubernetes a symlink: exit %d, want kubelet.conf's CA replaced\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Errorf("check: exit %d\n%s", r.code, r.stdout)
	}
	if st, err := os.Lstat(filepath.Join(root, "etc/kubernetes")); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("/etc/kubernetes is no longer the symlink: %v", err)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

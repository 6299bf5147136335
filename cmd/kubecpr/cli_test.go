package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/fixture"
)

func TestCheckExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		leafEnd  time.Time
		wantCode int
		want     pki.Status
	}{
		{"valid", now.AddDate(0, 6, 0), 0, pki.StatusOK},
		{"expiring", now.AddDate(0, 0, 10), 1, pki.StatusExpiring},
		{"expired", now.AddDate(0, 0, -3), 2, pki.StatusExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t, func(o *fixture.Options) {
				o.Leaf.NotAfter, o.KubeletClient.NotAfter = tc.leafEnd, tc.leafEnd
			})
			r := kubecpr(t, nil, rootArgs(root, "-o", "json", "check")...)
			if r.code != tc.wantCode {
				t.Fatalf("exit %d, want %d\n%s%s", r.code, tc.wantCode, r.stdout, r.stderr)
			}
			var rep inventory.Report
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("json: %v\n%s", err, r.stdout)
			}
			names := map[string]pki.Status{}
			for _, c := range rep.Certs {
				names[c.Name] = c.Status
			}
			for _, n := range []string{"admin.conf", "apiserver", "apiserver-etcd-client", "apiserver-kubelet-client",
				"controller-manager.conf", "etcd-healthcheck-client", "etcd-peer", "etcd-server", "front-proxy-client",
				"scheduler.conf", "super-admin.conf", "kubelet-client-current.pem"} {
				if names[n] != tc.want {
					t.Errorf("%s: status %q, want %q", n, names[n], tc.want)
				}
			}
			if len(rep.CAs) != 3 {
				t.Errorf("%d CAs, want 3", len(rep.CAs))
			}
		})
	}
}

func TestCheckTableHasKubeadmColumns(t *testing.T) {
	root := expiredNode(t)
	r := kubecpr(t, nil, rootArgs(root, "check")...)
	for _, col := range []string{"CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY", "EXTERNALLY MANAGED", "STATUS", "<invalid>", "expired"} {
		if !strings.Contains(r.stdout, col) {
			t.Errorf("table lacks %q:\n%s", col, r.stdout)
		}
	}
}

// certIdentity is what renewal must keep, compared field by field.
type certIdentity struct {
	Subject     string
	DNSNames    []string
	IPs         []string
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	PublicKey   string
}

func identities(t *testing.T, root string, includeKey bool) map[string]certIdentity {
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
	out := map[string]certIdentity{}
	for _, it := range inv.Items {
		if it.Cert == nil {
			t.Fatalf("%s unreadable: %v", it.Name, it.Problems)
		}
		id := certIdentity{Subject: it.Cert.Subject.String(), DNSNames: it.Cert.DNSNames,
			KeyUsage: it.Cert.KeyUsage, ExtKeyUsage: it.Cert.ExtKeyUsage}
		for _, ip := range it.Cert.IPAddresses {
			id.IPs = append(id.IPs, ip.String())
		}
		if includeKey {
			der, _ := x509.MarshalPKIXPublicKey(it.Cert.PublicKey)
			id.PublicKey = fmt.Sprintf("%x", der)
		}
		out[it.Name] = id
	}
	return out
}

func TestRunUntilKubeconfigsThenRollback(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	idsBefore := identities(t, root, true)
	oldPEM, err := os.Readlink(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	if err != nil {
		t.Fatal(err)
	}

	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Fatalf("check after run: exit %d\n%s", r.code, r.stdout)
	}

	// Same identity, same keys, except the kubelet's client cert, which
	// rotates its key as the kubelet does.
	idsAfter := identities(t, root, true)
	k := "kubelet-client-current.pem"
	if idsAfter[k].PublicKey == idsBefore[k].PublicKey {
		t.Errorf("%s: key not rotated", k)
	}
	idsBefore[k] = certIdentity{Subject: idsBefore[k].Subject, DNSNames: idsBefore[k].DNSNames, IPs: idsBefore[k].IPs, KeyUsage: idsBefore[k].KeyUsage, ExtKeyUsage: idsBefore[k].ExtKeyUsage}
	a := idsAfter[k]
	a.PublicKey = ""
	idsAfter[k] = a
	// kubelet.crt is re-created the kubelet's way: its CN carries the
	// creation time ("cp-1@<unix>"); everything else is kept.
	for _, ids := range []map[string]certIdentity{idsBefore, idsAfter} {
		kc := ids["kubelet.crt"]
		kc.Subject = strings.SplitN(kc.Subject, "@", 2)[0]
		ids["kubelet.crt"] = kc
	}
	if diff := cmp.Diff(idsBefore, idsAfter); diff != "" {
		t.Errorf("renewal changed identities (-before +after):\n%s", diff)
	}

	// Every renewed certificate chains to its CA (independent check with
	// the fixture's reader and crypto/x509) with a new 1-year lifetime.
	n, _ := node.New(root)
	c, _ := n.Discover("")
	inv, err := inventory.Build(n, c, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range inv.Items {
		if it.Kind == inventory.KindKubeletServing {
			continue
		}
		ca := inv.CA(it.CAName).CA.Cert
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		if _, err := it.Cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s does not chain to %s: %v", it.Name, it.CAName, err)
		}
		if got := it.Cert.NotAfter.Sub(now); got < 364*24*time.Hour || got > 366*24*time.Hour {
			t.Errorf("%s: lifetime %s, want ~1y", it.Name, got)
		}
	}
	// The kubelet way: a new dated file, the symlink repointed.
	link, err := os.Readlink(filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem"))
	if err != nil || link != "/var/lib/kubelet/pki/"+inventory.KubeletPEMName(now) {
		t.Errorf("kubelet-client-current.pem -> %q (%v), want the new dated file", link, err)
	}
	if _, err := os.Stat(filepath.Join(root, oldPEM)); err != nil || link == oldPEM {
		t.Errorf("the previous pem %s: %v (the kubelet keeps its old rotations; the link must leave it)", oldPEM, err)
	}

	r = kubecpr(t, nil, rootArgs(root, "rollback")...)
	if r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Fatalf("rollback is not byte-identical:\n%s", diff)
	}
	// Idempotent: a second rollback has nothing to do and changes nothing.
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("second rollback: exit %d\n%s", r.code, r.stderr)
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Fatalf("second rollback changed files:\n%s", diff)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	for _, args := range [][]string{{"plan"}, {"run", "--dry-run"}} {
		r := kubecpr(t, nil, rootArgs(root, args...)...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, r.code, r.stderr)
		}
		if !strings.Contains(r.stdout, "renew apiserver") || !strings.Contains(r.stdout, "dry run") {
			t.Errorf("%v: plan does not list the renewals:\n%s", args, r.stdout)
		}
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Fatalf("dry run changed files:\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/kubecpr")); err == nil {
		t.Error("dry run created the state dir")
	}
}

func TestRehearseNeverTouchesTheNode(t *testing.T) {
	root := expiredNode(t, func(o *fixture.Options) {
		// Valid today, expiring next month: the drill runs on that day.
		o.Leaf.NotAfter, o.KubeletClient.NotAfter = now.AddDate(0, 1, 0), now.AddDate(0, 1, 0)
	})
	before := snapshot(t, root)
	r := kubecpr(t, nil, "--root", root, "rehearse", "--update-user-kubeconfigs")
	if r.code != 0 {
		t.Fatalf("rehearse: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"rehearsal in", "certs done in", "kubeconfigs done in", "verify done in"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rehearsal output lacks %q:\n%s", want, r.stdout)
		}
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Fatalf("rehearse changed the node:\n%s", diff)
	}
}

func TestStatusShowsJournal(t *testing.T) {
	root := expiredNode(t)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "certs", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: %d %s", r.code, r.stderr)
	}
	r := kubecpr(t, nil, rootArgs(root, "-o", "json", "status")...)
	var st RunStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	done := map[string]string{}
	for _, a := range st.Actions {
		done[a.Action] = a.State
	}
	for _, id := range []string{"backup/node", "certs/apiserver", "certs/etcd-server"} {
		if done[id] != "done" {
			t.Errorf("%s: %q, want done (%v)", id, done[id], done)
		}
	}
	if !st.Open {
		t.Error("run closed after --until certs; want open")
	}
	// Continuing the same run: kubeconfigs next, then rollback undoes both.
	if r := kubecpr(t, nil, rootArgs(root, "run", "--from", "kubeconfigs", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 || !strings.Contains(r.stdout, "continuing unfinished run "+st.RunID) {
		t.Fatalf("run --from kubeconfigs: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

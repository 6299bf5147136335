package kubeadmbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/kubecpr/kubecpr/test/fixture"
)

// KubeletClientPEM is the kubelet's current client certificate link.
const KubeletClientPEM = "/var/lib/kubelet/pki/kubelet-client-current.pem"

// Expire re-signs every leaf certificate of every node into the past with
// its own key (fixture.ResignWithCA on the control planes: pki leaves,
// kubeconfig certificates, the kubelet's current pem; on the workers the
// kubelet's current pem, with cp-1's CA), valid from ago+1y before now
// until ago before now; the CAs are left alone. Then it restarts what
// runs, as a reboot would: every container of every node is killed (the
// kubelet starts them again, on the expired files) and every kubelet is
// restarted.
func (b *Bed) Expire(t testing.TB, ago time.Duration) {
	t.Helper()
	now := time.Now()
	w := fixture.Window{NotBefore: now.Add(-ago).AddDate(-1, 0, 0), NotAfter: now.Add(-ago)}
	cp1 := b.Nodes[0]
	crt, err := fixture.ReadCert(cp1.Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := fixture.ReadKey(cp1.Path("/etc/kubernetes/pki/ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca := &fixture.CA{Cert: crt, Key: key}
	for _, n := range b.Nodes {
		if n.Role == ControlPlane {
			if err := fixture.ResignWithCA(n.Root, w, nil, nil); err != nil {
				t.Fatalf("kubeadmbed: expiring %s: %v", n.Name, err)
			}
			continue
		}
		if err := resignPEM(n.resolve(KubeletClientPEM), ca, w); err != nil {
			t.Fatalf("kubeadmbed: expiring %s's kubelet client certificate: %v", n.Name, err)
		}
	}
	for _, n := range b.Nodes {
		if err := killContainers(n.D.Socket); err != nil {
			t.Fatalf("kubeadmbed: %s: %v", n.Name, err)
		}
		if out, err := exec.Command("sh", "-c", n.KubeletRestartCommand()).CombinedOutput(); err != nil {
			t.Fatalf("kubeadmbed: restarting %s's kubelet: %v %s", n.Name, err, out)
		}
	}
}

// resolve follows the node path's links inside the node's tree.
func (n *Node) resolve(p string) string {
	for i := 0; i < 10; i++ {
		target, err := os.Readlink(n.Path(p))
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return n.Path(p)
}

// resignPEM re-signs the certificate of a cert+key PEM file (the kubelet's
// client pem) with ca into w, keeping its key and everything else.
func resignPEM(file string, ca *fixture.CA, w fixture.Window) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var old *x509.Certificate
	var keyPart []byte
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch {
		case blk.Type == "CERTIFICATE" && old == nil:
			if old, err = x509.ParseCertificate(blk.Bytes); err != nil {
				return err
			}
		case strings.Contains(blk.Type, "PRIVATE KEY"):
			keyPart = append(keyPart, pem.EncodeToMemory(blk)...)
		}
	}
	if old == nil {
		return fmt.Errorf("%s: no certificate", file)
	}
	tmpl := *old
	tmpl.SerialNumber, _ = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl.NotBefore, tmpl.NotAfter = w.NotBefore.UTC(), w.NotAfter.UTC()
	tmpl.Raw, tmpl.RawTBSCertificate, tmpl.Signature = nil, nil, nil
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.Cert, old.PublicKey, ca.Key)
	if err != nil {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPart...), st.Mode().Perm())
}

// killContainers kills every running task in the CRI's namespace.
func killContainers(socket string) error {
	c, err := containerd.New(socket, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "k8s.io"), 30*time.Second)
	defer cancel()
	cs, err := c.Containers(ctx)
	if err != nil {
		return err
	}
	for _, ctr := range cs {
		if task, err := ctr.Task(ctx, nil); err == nil {
			_ = task.Kill(ctx, syscall.SIGKILL)
		}
	}
	return nil
}

// ExpireCAs re-signs the cluster's three CA certificates with their own
// keys into a ten-year window that ended ago before now, as a cluster made
// ten years ago has them, and puts the same expired certificates wherever
// the old ones were: every control plane's pki (kubeadm copies the CAs to
// each), every worker's pki/ca.crt, and the certificate-authority-data of
// every kubeconfig under /etc/kubernetes. Leaves are not touched (their
// signatures stay valid under a certificate of the same key and subject);
// Expire then expires them and restarts what runs.
func (b *Bed) ExpireCAs(t testing.TB, ago time.Duration) {
	t.Helper()
	now := time.Now()
	cp1 := b.Nodes[0]
	swap := map[string][]byte{} // old PEM -> expired PEM
	for _, name := range []string{"ca", "front-proxy-ca", "etcd/ca"} {
		crtPath := cp1.Path("/etc/kubernetes/pki/" + name + ".crt")
		old, err := fixture.ReadCert(crtPath)
		if err != nil {
			t.Fatal(err)
		}
		key, err := fixture.ReadKey(cp1.Path("/etc/kubernetes/pki/" + name + ".key"))
		if err != nil {
			t.Fatal(err)
		}
		tmpl := *old
		tmpl.SerialNumber, _ = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-ago).AddDate(-10, 0, 0).UTC(), now.Add(-ago).UTC()
		tmpl.Raw, tmpl.RawTBSCertificate, tmpl.Signature = nil, nil, nil
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, old.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		swap[string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Raw}))] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	for _, n := range b.Nodes {
		filepath.WalkDir(n.Path("/etc/kubernetes"), func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			out := data
			for oldPEM, newPEM := range swap {
				out = bytes.ReplaceAll(out, []byte(oldPEM), newPEM)
				out = bytes.ReplaceAll(out, []byte(base64.StdEncoding.EncodeToString([]byte(oldPEM))), []byte(base64.StdEncoding.EncodeToString(newPEM)))
			}
			if !bytes.Equal(out, data) {
				st, _ := os.Stat(p)
				if err := os.WriteFile(p, out, st.Mode().Perm()); err != nil {
					t.Fatal(err)
				}
			}
			return nil
		})
	}
}

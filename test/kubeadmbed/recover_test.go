package kubeadmbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/test/kubecprbin"
)

// driver runs `kubecpr ARGS` inside cp-1, as the operator logged in on the
// first control plane does, reaching every node (cp-1 too) over SSH.
func driver(t *testing.T, b *Bed, args ...string) (string, error) {
	t.Helper()
	argv := b.Nodes[0].Driver(kubecprbin.Path(t), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// credentials is every file of the node's Kubernetes state that a run may
// change: path -> sha256 and mode, links followed (the kubelet's current
// pem by what it holds, not where it points).
func credentials(t *testing.T, n *Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, dir := range []string{"/etc/kubernetes", "/var/lib/kubelet/pki", "/var/lib/kubelet/config.yaml"} {
		filepath.WalkDir(n.Path(dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			rel, _ := filepath.Rel(n.Root, p)
			// Links inside the node's tree (the kubelet's are absolute
			// node paths) are followed there.
			p = n.resolve("/" + rel)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(p)
			sum := sha256.Sum256(b)
			out[rel] = hex.EncodeToString(sum[:8]) + " " + st.Mode().Perm().String()
			return nil
		})
	}
	return out
}

// credentialDiff compares two credentials maps. The restarted kubelet may
// write the (restored) certificate it loaded again as a new dated file:
// such a file, holding exactly what the current one holds, is not a
// difference.
func credentialDiff(want, got map[string]string) string {
	cur := "var/lib/kubelet/pki/kubelet-client-current.pem"
	var lines []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			lines = append(lines, "- "+k)
		} else if g != v {
			lines = append(lines, "~ "+k+": "+v+" => "+g)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			if strings.HasPrefix(k, "var/lib/kubelet/pki/kubelet-client-2") && v == got[cur] {
				continue
			}
			lines = append(lines, "+ "+k)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// assertRecovered proves the cluster back from the outside: the API answers
// cp-1's renewed admin.conf and every API server serves a certificate that
// chains to the CA with its node's address; etcd has every member; every
// Node's Lease is renewed after the run; every kubelet's client
// certificate is valid and signed by the CA.
func assertRecovered(ctx context.Context, t *testing.T, b *Bed, since time.Time) {
	t.Helper()
	caPEM, err := os.ReadFile(b.Nodes[0].Path("/etc/kubernetes/pki/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	for _, n := range b.ControlPlanes() {
		served, err := servedChain(ctx, b, n.Address+":6443")
		if err != nil {
			t.Errorf("%s: kube-apiserver: %v", n.Name, err)
			continue
		}
		if _, err := served.Verify(x509.VerifyOptions{Roots: pool, DNSName: n.Name}); err != nil {
			t.Errorf("%s: the served apiserver certificate does not verify for %s: %v", n.Name, n.Name, err)
		}
		if err := served.VerifyHostname(n.Address); err != nil {
			t.Errorf("%s: the served apiserver certificate lacks the node's address: %v", n.Name, err)
		}
	}
	members, err := b.EtcdMembers(ctx, b.Nodes[0])
	if err != nil || len(members) != len(b.ControlPlanes()) {
		t.Errorf("etcd members after the run: %v (%v), want %d", members, err, len(b.ControlPlanes()))
	}
	c := b.Client(t)
	deadline := time.Now().Add(3 * time.Minute)
	for _, n := range b.Nodes {
		for {
			l, err := c.CoordinationV1().Leases("kube-node-lease").Get(ctx, n.Name, metav1.GetOptions{})
			if err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.Time.After(since) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the Lease is not renewed since %s (%v)\n%s", n.Name, since.Format(time.RFC3339), err, n.Kubelet.LogTail(20))
			}
			time.Sleep(2 * time.Second)
		}
		pemBytes, err := os.ReadFile(n.resolve(KubeletClientPEM))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pemBytes)
		if blk == nil {
			t.Fatalf("%s: no certificate in %s", n.Name, KubeletClientPEM)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: the kubelet's client certificate: %v", n.Name, err)
		}
		if want := "system:node:" + n.Name; cert.Subject.CommonName != want {
			t.Errorf("%s: the kubelet's client certificate is for %q, want %q", n.Name, cert.Subject.CommonName, want)
		}
	}
}

// servedChain is the certificate a TLS server in the lab serves.
func servedChain(ctx context.Context, b *Bed, addr string) (*x509.Certificate, error) {
	var last error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		conn, err := b.Dial(ctx, "tcp", addr)
		if err != nil {
			last = err
			continue
		}
		cert, err := peerCertificate(conn)
		conn.Close()
		if err == nil {
			return cert, nil
		}
		last = err
	}
	return nil, last
}

func peerCertificate(conn net.Conn) (*x509.Certificate, error) {
	tc := tlsClient(conn)
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return nil, fmt.Errorf("no certificate served")
	}
	return st.PeerCertificates[0], nil
}

// tlsClient wraps conn for a handshake that only reads what is served.
func tlsClient(conn net.Conn) *tls.Conn {
	return tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
}

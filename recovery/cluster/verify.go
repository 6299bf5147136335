package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	cinv "github.com/kubecpr/kubecpr/recovery/cluster/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// verifyRow is one node's line of the table at the end of a cluster run:
// what was proven on the wire, or why not.
type verifyRow struct {
	node, role                                      string
	check, etcd, etcdClient, etcdPeer, api, kubelet string
}

// verifyState collects the rows, and the etcd client certificate minted
// once per run.
type verifyState struct {
	mu   sync.Mutex
	rows map[string]*verifyRow

	once     sync.Once
	etcdCert tls.Certificate
	etcdCA   *x509.CertPool
	etcdErr  error
}

func (d *Driver) setRow(n cinv.Node, f func(r *verifyRow)) {
	v := &d.checks
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rows == nil {
		v.rows = map[string]*verifyRow{}
	}
	r := v.rows[n.Name]
	if r == nil {
		r = &verifyRow{node: n.Name, role: string(n.Role)}
		v.rows[n.Name] = r
	}
	f(r)
}

// etcdClient mints, in memory, a short-lived etcd client certificate with
// the etcd CA of the control-plane tree on this machine (as the etcd
// snapshot does): its key is never written anywhere.
func (d *Driver) etcdClient() (tls.Certificate, *x509.CertPool, error) {
	v := &d.checks
	v.once.Do(func() {
		if d.o.Control == nil {
			v.etcdErr = errors.New("no etcd CA on this machine (run kubecpr cluster on a control-plane node, or pass --ca-from)")
			return
		}
		const dir = node.DefaultPKIDir + "/etcd"
		crt, err := d.o.Control.ReadFile(dir + "/ca.crt")
		if err != nil {
			v.etcdErr = err
			return
		}
		key, err := d.o.Control.ReadFile(dir + "/ca.key")
		if err != nil {
			v.etcdErr = fmt.Errorf("%w (an external etcd CA: check the members with etcdctl and a client certificate you have)", err)
			return
		}
		ca, err := pki.ParseCertificate(crt)
		if err != nil {
			v.etcdErr = fmt.Errorf("%s: %w", d.o.Control.Path(dir+"/ca.crt"), err)
			return
		}
		k, err := pki.ParsePrivateKey(key)
		if err != nil {
			v.etcdErr = fmt.Errorf("%s: %w", d.o.Control.Path(dir+"/ca.key"), err)
			return
		}
		v.etcdCert, v.etcdErr = mintEtcdClient(ca, k)
		v.etcdCA = x509.NewCertPool()
		v.etcdCA.AddCert(ca)
	})
	return v.etcdCert, v.etcdCA, v.etcdErr
}

// mintEtcdClient signs a client certificate valid for ten minutes on the
// machine's real clock (etcd checks it against its own).
func mintEtcdClient(ca *x509.Certificate, caKey any) (tls.Certificate, error) {
	key, err := pki.NewECKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := pki.NewSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "kubecpr-cluster-verify"},
		NotBefore: now.Add(-5 * time.Minute).UTC(), NotAfter: now.Add(10 * time.Minute).UTC(),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("signing the verify client certificate with the etcd CA: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// servedLeaf completes a TLS handshake with hostport and returns the
// certificate the server presents, verified against roots (when given)
// for the host dialled.
func servedLeaf(ctx context.Context, hostport string, client *tls.Certificate, roots *x509.CertPool) (*x509.Certificate, error) {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} // verified below, against the cluster's own CA
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(dctx, "tcp", hostport)
	if err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", hostport, err)
	}
	defer conn.Close()
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s presented no certificate", hostport)
	}
	leaf := chain[0]
	if roots != nil {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter}); err != nil {
			return leaf, fmt.Errorf("%s serves serial %s, which does not verify: %w", hostport, leaf.SerialNumber.Text(16), err)
		}
	}
	return leaf, nil
}

// onWire compares the serial a server presents with the one on disk.
func onWire(ctx context.Context, what, rawURL string, want string, client *tls.Certificate, roots *x509.CertPool) (string, error) {
	hostport := rawURL
	if u, err := url.Parse(rawURL); err == nil && u.Host != "" {
		hostport = u.Host
	}
	if hostport == "" {
		return "not found in the manifest", fmt.Errorf("%s: no address in the node's manifest", what)
	}
	if want == "" {
		return "no certificate on disk", fmt.Errorf("%s: no certificate on disk to compare with", what)
	}
	leaf, err := servedLeaf(ctx, hostport, client, roots)
	if err != nil {
		return "FAILED", fmt.Errorf("%s: %w", what, err)
	}
	got := leaf.SerialNumber.Text(16)
	if got != want {
		return "OLD serial " + short(got), fmt.Errorf("%s at %s serves serial %s, the renewed certificate on disk is %s: the process did not load it (restart it)", what, hostport, got, want)
	}
	return fmt.Sprintf("new %s until %s", short(got), leaf.NotAfter.UTC().Format("2006-01-02")), nil
}

func short(serial string) string {
	if len(serial) > 8 {
		return serial[:8] + "…"
	}
	return serial
}

// verifyControlPlane proves a live control plane on the wire, from this
// machine: its API server and etcd serve the serials of the renewed
// certificates on its disk, and its etcd member answers with every
// inventory control plane in the member list, healthy, with a leader.
func (d *Driver) verifyControlPlane(ctx context.Context, n cinv.Node) error {
	out, err := d.kubecpr(ctx, n, true, "facts", "-o", "json")
	if err != nil {
		return fmt.Errorf("reading its facts after the run: %w", err)
	}
	var f Facts
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		return fmt.Errorf("reading its facts after the run: %v", err)
	}
	var problems []error
	var roots *x509.CertPool
	if d.o.CA != nil && d.o.CA.Cert != nil {
		roots = x509.NewCertPool()
		roots.AddCert(d.o.CA.Cert)
	} else if d.o.Control != nil {
		if b, err := d.o.Control.ReadFile(path.Join(node.DefaultPKIDir, "ca.crt")); err == nil {
			if c, err := pki.ParseCertificate(b); err == nil {
				roots = x509.NewCertPool()
				roots.AddCert(c)
			}
		}
	}
	api, err := onWire(ctx, "the API server", f.APIServer, f.Serials["apiserver"], nil, roots)
	if err != nil {
		problems = append(problems, err)
	}
	d.setRow(n, func(r *verifyRow) { r.api = api })

	cert, etcdRoots, err := d.etcdClient()
	if err != nil {
		d.setRow(n, func(r *verifyRow) { r.etcd, r.etcdClient, r.etcdPeer = "not checked", "not checked", "not checked" })
		fmt.Fprintf(d.o.Out, "[%s] etcd not checked from here: %v\n", n.Name, err)
		return errors.Join(problems...)
	}
	ec, err := onWire(ctx, "etcd's client URL", f.EtcdClientURL, f.Serials["etcd-server"], &cert, etcdRoots)
	if err != nil {
		problems = append(problems, err)
	}
	ep, err := onWire(ctx, "etcd's peer URL", f.EtcdPeerURL, f.Serials["etcd-peer"], &cert, etcdRoots)
	if err != nil {
		problems = append(problems, err)
	}
	member, err := d.etcdMember(ctx, f, cert, etcdRoots)
	if err != nil {
		problems = append(problems, err)
	}
	d.setRow(n, func(r *verifyRow) { r.etcd, r.etcdClient, r.etcdPeer = member, ec, ep })
	return errors.Join(problems...)
}

// etcdMember asks the node's etcd member (go.etcd.io/etcd/client/v3) for
// the member list and its status.
func (d *Driver) etcdMember(ctx context.Context, f Facts, cert tls.Certificate, roots *x509.CertPool) (string, error) {
	if f.EtcdClientURL == "" {
		return "FAILED", errors.New("etcd: no --advertise-client-urls in the node's etcd manifest")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{f.EtcdClientURL},
		TLS:         &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12},
		DialTimeout: 10 * time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithNoProxy()},
	})
	if err != nil {
		return "FAILED", fmt.Errorf("etcd at %s: %w", f.EtcdClientURL, err)
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ml, err := cli.MemberList(cctx)
	if err != nil {
		return "FAILED", fmt.Errorf("etcd member list from %s: %w", f.EtcdClientURL, err)
	}
	st, err := cli.Status(cctx, f.EtcdClientURL)
	if err != nil {
		return "FAILED", fmt.Errorf("etcd status of %s: %w", f.EtcdClientURL, err)
	}
	names := map[string]bool{}
	var started []string
	for _, m := range ml.Members {
		names[m.Name] = true
		if len(m.ClientURLs) > 0 {
			started = append(started, m.Name)
		}
	}
	var missing []string
	for _, cp := range d.o.Inventory.ControlPlanes() {
		if !names[cp.Name] {
			missing = append(missing, cp.Name)
		}
	}
	switch {
	case len(missing) > 0:
		return "FAILED", fmt.Errorf("etcd's member list (from %s) lacks %s of the inventory", f.EtcdClientURL, strings.Join(missing, ", "))
	case len(started) != len(ml.Members):
		return "FAILED", fmt.Errorf("etcd: %d of %d members have published their client URLs (unstarted members)", len(started), len(ml.Members))
	case len(st.Errors) > 0:
		return "FAILED", fmt.Errorf("etcd member %s reports errors: %s", f.EtcdName, strings.Join(st.Errors, "; "))
	case st.Leader == 0:
		return "FAILED", fmt.Errorf("etcd member %s has no leader", f.EtcdName)
	}
	self := "member"
	if st.Header != nil && st.Header.MemberId == st.Leader {
		self = "leader"
	}
	return fmt.Sprintf("healthy %s, %d/%d members", self, len(started), len(ml.Members)), nil
}

// VerifyTable prints what the verify phase proved, node by node.
func (d *Driver) VerifyTable(w io.Writer) {
	v := &d.checks
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.rows) == 0 {
		return
	}
	rows := make([]*verifyRow, 0, len(v.rows))
	for _, r := range v.rows {
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].role != rows[j].role {
			return rows[i].role == string(cinv.ControlPlane)
		}
		return rows[i].node < rows[j].node
	})
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tFILES\tETCD MEMBER\tETCD CLIENT CERT\tETCD PEER CERT\tAPISERVER CERT\tKUBELET")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.node, r.role, dash(r.check), dash(r.etcd), dash(r.etcdClient), dash(r.etcdPeer), dash(r.api), dash(r.kubelet))
	}
	tw.Flush()
}

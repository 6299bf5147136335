package etcdsnap

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestMintClient(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, "etcd-ca", now.Add(-time.Hour), now.AddDate(10, 0, 0))
	eca, err := parseCA(ca.certPEM, ca.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mintClient(eca, now)
	if err != nil {
		t.Fatal(err)
	}
	l := c.Leaf
	if l.Subject.CommonName != ClientCommonName || len(l.Subject.Organization) != 0 {
		t.Errorf("subject %v", l.Subject)
	}
	if len(l.ExtKeyUsage) != 1 || l.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || l.IsCA || l.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("usages: eku %v ku %v ca %v", l.ExtKeyUsage, l.KeyUsage, l.IsCA)
	}
	if k, ok := c.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", c.PrivateKey)
	}
	if d := now.Sub(l.NotBefore); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("NotBefore %s before now, want about 5 min", d)
	}
	if d := l.NotAfter.Sub(now); d < 9*time.Minute || d > 10*time.Minute {
		t.Errorf("NotAfter %s after now, want 10 min", d)
	}
	if _, err := l.Verify(x509.VerifyOptions{Roots: eca.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("minted certificate does not verify against the CA: %v", err)
	}

	// A CA ending in 3 minutes caps the certificate.
	short := newTestCA(t, "short", now.Add(-time.Hour), now.Add(3*time.Minute))
	sca, _ := parseCA(short.certPEM, short.keyPEM)
	if c, err := mintClient(sca, now); err != nil || !c.Leaf.NotAfter.Equal(short.cert.NotAfter) {
		t.Errorf("CA ending soon: err %v, NotAfter %v want %v", err, c.Leaf, short.cert.NotAfter)
	}
	// An expired CA cannot sign anything etcd accepts.
	old := newTestCA(t, "old", now.AddDate(-10, 0, 0), now.Add(-time.Hour))
	oca, _ := parseCA(old.certPEM, old.keyPEM)
	if _, err := mintClient(oca, now); !errors.Is(err, ErrCAExpired) || !strings.Contains(err.Error(), "docs/expired-ca.md") {
		t.Errorf("expired CA: %v", err)
	}
}

func TestParseCAErrors(t *testing.T) {
	now := time.Now()
	a := newTestCA(t, "a", now.Add(-time.Hour), now.AddDate(1, 0, 0))
	b := newTestCA(t, "b", now.Add(-time.Hour), now.AddDate(1, 0, 0))
	leaf := a.leaf(t, "not-a-ca", x509.ExtKeyUsageClientAuth, nil, now.Add(-time.Hour), now.Add(time.Hour))
	leafKey, _ := pkiEncode(t, leaf)
	cases := map[string]struct {
		cert, key []byte
		want      string
	}{
		"no cert":      {nil, a.keyPEM, "no etcd CA certificate"},
		"no key":       {a.certPEM, nil, "no etcd CA key"},
		"garbage cert": {[]byte("not pem"), a.keyPEM, "etcd CA certificate"},
		"garbage key":  {a.certPEM, []byte("not pem"), "etcd CA key"},
		"mismatch":     {a.certPEM, b.keyPEM, "does not belong"},
		"not a CA":     {pemOf(leaf), leafKey, "not a CA certificate"},
	}
	needles := append(secretNeedles(t, a.key, a.keyPEM), secretNeedles(t, b.key, b.keyPEM)...)
	for name, c := range cases {
		_, err := parseCA(c.cert, c.key)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", name, err, c.want)
			continue
		}
		assertNoSecret(t, needles, nil, err.Error())
	}
	// A bundle: the signer is the certificate the key belongs to, every
	// certificate is trusted for the server.
	bundle := append(append([]byte{}, b.certPEM...), a.certPEM...)
	eca, err := parseCA(bundle, a.keyPEM)
	if err != nil || eca.signer.Subject.CommonName != "a" {
		t.Fatalf("bundle: %v", err)
	}
}

func TestVerifyServer(t *testing.T) {
	now := time.Now()
	lo := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	ca := newTestCA(t, "etcd-ca", now.AddDate(-2, 0, 0), now.AddDate(8, 0, 0))
	other := newTestCA(t, "etcd-ca", now.AddDate(-2, 0, 0), now.AddDate(8, 0, 0)) // same name, other key
	eca, _ := parseCA(ca.certPEM, ca.keyPEM)
	expired := ca.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.AddDate(-1, 0, -2), now.Add(-48*time.Hour))
	future := ca.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.Add(48*time.Hour), now.AddDate(1, 0, 0))
	fresh := ca.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	foreign := other.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	foreignExpired := other.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.AddDate(-1, 0, -2), now.Add(-48*time.Hour))
	elsewhere := ca.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("10.0.0.5")}, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	clientOnly := ca.leaf(t, "healthcheck", x509.ExtKeyUsageClientAuth, lo, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	// The CA certificate re-signed with its own key an hour ago (the way
	// out of an expired CA): the server certificate expired before it.
	reissued := *ca
	reissued.cert = resign(t, ca, now.Add(-time.Hour), now.AddDate(10, 0, 0))
	reissuedCA, err := parseCA(pemOf(tls.Certificate{Leaf: reissued.cert}), ca.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	olderThanCA := reissued.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.AddDate(-1, 0, -2), now.Add(-48*time.Hour))
	inter := newSubCA(t, ca, "etcd-intermediate", now.AddDate(-2, 0, 0), now.AddDate(5, 0, 0))
	viaInter := inter.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.AddDate(-1, 0, -2), now.Add(-48*time.Hour))
	viaInter.Certificate = append(viaInter.Certificate, inter.cert.Raw)
	for name, c := range map[string]struct {
		cert tls.Certificate
		host string
		want string  // "" = accepted
		ca   *etcdCA // default eca
	}{
		"expired before the CA was re-issued": {olderThanCA, "127.0.0.1", "", reissuedCA},
		"expired, via an intermediate":        {viaInter, "127.0.0.1", "", nil},
		"expired":                             {expired, "127.0.0.1", "", nil},
		"not yet valid":                       {future, "127.0.0.1", "", nil},
		"fresh":                               {fresh, "127.0.0.1", "", nil},
		"fresh ipv6":                          {fresh, "::1", "", nil},
		"other CA":                            {foreign, "127.0.0.1", "not signed by the etcd CA", nil},
		"other CA, expired":                   {foreignExpired, "127.0.0.1", "not signed by the etcd CA", nil},
		"other address":                       {elsewhere, "127.0.0.1", "is not valid for 127.0.0.1", nil},
		"client certificate only":             {clientOnly, "127.0.0.1", "not a server certificate", nil},
	} {
		if c.ca == nil {
			c.ca = eca
		}
		v := &serverVerifier{ca: c.ca, host: c.host, now: time.Now}
		var chain []*x509.Certificate
		for _, der := range c.cert.Certificate {
			cert, _ := x509.ParseCertificate(der)
			chain = append(chain, cert)
		}
		err := v.verifyConnection(tls.ConnectionState{PeerCertificates: chain})
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		var se *ServerCertError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), c.want) || v.lastError() == nil {
			t.Errorf("%s: err %v, want a ServerCertError with %q", name, err, c.want)
		}
	}
}

// tlsServer is an HTTPS server on 127.0.0.1 that behaves like etcd's
// client port: its serving certificate, and client certificates required
// and verified against clientCAs. sawClientCert counts handshakes where a
// client certificate arrived.
func tlsServer(t *testing.T, serving tls.Certificate, clientCAs *x509.CertPool) (url string, sawClientCert *atomic.Int32) {
	t.Helper()
	var saw atomic.Int32
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/version" && len(r.TLS.PeerCertificates) > 0 && r.TLS.PeerCertificates[0].Subject.CommonName == ClientCommonName {
			io.WriteString(w, `{"etcdserver":"3.5.21","etcdcluster":"3.5.0"}`)
			return
		}
		http.NotFound(w, r)
	}))
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.TLS = &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) > 0 {
				saw.Add(1)
			}
			return nil
		},
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s.URL, &saw
}

func TestProbe(t *testing.T) {
	now := time.Now()
	lo := []net.IP{net.ParseIP("127.0.0.1")}
	ca := newTestCA(t, "etcd-ca", now.AddDate(-2, 0, 0), now.AddDate(8, 0, 0))
	other := newTestCA(t, "etcd-ca", now.AddDate(-2, 0, 0), now.AddDate(8, 0, 0))
	eca, _ := parseCA(ca.certPEM, ca.keyPEM)
	client, err := mintClient(eca, now)
	if err != nil {
		t.Fatal(err)
	}
	run := func(url string, timeout time.Duration) error {
		hp := strings.TrimPrefix(url, "https://")
		v := &serverVerifier{ca: eca, host: "127.0.0.1", now: time.Now}
		return probe(context.Background(), url, hp, tlsConfig(client, v), v, timeout)
	}
	expiredServing := ca.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.AddDate(-1, 0, -2), now.Add(-48*time.Hour))

	t.Run("expired etcd answers", func(t *testing.T) {
		url, saw := tlsServer(t, expiredServing, eca.roots)
		if err := run(url, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if saw.Load() != 1 {
			t.Fatalf("server saw %d client certificates, want 1", saw.Load())
		}
	})
	t.Run("impostor gets no client certificate", func(t *testing.T) {
		url, saw := tlsServer(t, other.leaf(t, "cp-1", x509.ExtKeyUsageServerAuth, lo, now.Add(-time.Hour), now.AddDate(1, 0, 0)), eca.roots)
		err := run(url, 5*time.Second)
		var se *ServerCertError
		t.Log(err)
		if !errors.As(err, &se) || errors.Is(err, ErrEtcdDown) {
			t.Fatalf("err %v, want a ServerCertError", err)
		}
		if saw.Load() != 0 {
			t.Fatalf("the client certificate was sent to a server the etcd CA did not vouch for")
		}
	})
	t.Run("etcd trusts another CA", func(t *testing.T) {
		url, _ := tlsServer(t, expiredServing, x509.NewCertPool())
		err := run(url, 5*time.Second)
		var re *RejectedError
		t.Log(err)
		if !errors.As(err, &re) || errors.Is(err, ErrEtcdDown) || !strings.Contains(err.Error(), "--trusted-ca-file") {
			t.Fatalf("err %v, want a RejectedError", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		start := time.Now()
		err = run("https://"+addr, 5*time.Second)
		if !errors.Is(err, ErrEtcdDown) || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("err %v, want ErrEtcdDown (connection refused)", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("refused took %s", d)
		}
	})
	t.Run("silent", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close() // accepted, never answered
			}
		}()
		start := time.Now()
		err = run("https://"+l.Addr().String(), 300*time.Millisecond)
		if !errors.Is(err, ErrEtcdDown) {
			t.Fatalf("err %v, want ErrEtcdDown", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("silent server took %s", d)
		}
	})
}

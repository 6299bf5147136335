package etcdsnap

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Save without a real etcd: what is refused before any connection, and
// etcd down (refused, silent) as ErrEtcdDown within the timeout.
func TestSaveWithoutEtcd(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, "etcd-ca", now.Add(-time.Hour), now.AddDate(10, 0, 0))
	expiredCA := newTestCA(t, "etcd-ca", now.AddDate(-10, 0, 0), now.Add(-time.Hour))
	dir := t.TempDir()
	dest := filepath.Join(dir, "snap.db")
	refused := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "https://" + l.Addr().String()
	}()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn
		for {
			c, err := silent.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	silentEP := "https://" + silent.Addr().String()
	os.Mkdir(filepath.Join(dir, "adir"), 0o700)

	base := Options{Endpoints: []string{refused}, CACert: ca.certPEM, CAKey: ca.keyPEM, Dest: dest, Timeout: 500 * time.Millisecond}
	var texts []string
	for name, c := range map[string]struct {
		edit func(o *Options)
		down bool
		want string
		max  time.Duration
	}{
		"refused":             {func(o *Options) {}, true, "connection refused", time.Second},
		"silent":              {func(o *Options) { o.Endpoints = []string{silentEP} }, true, "no answer within", 2 * time.Second},
		"refused then silent": {func(o *Options) { o.Endpoints = []string{refused, silentEP} }, true, "on any endpoint", 2 * time.Second},
		// silent: the member takes connections and serves nothing (no
		// quorum); its other addresses are not asked.
		"silent then refused": {func(o *Options) { o.Endpoints = []string{silentEP, refused} }, true, "without quorum", 2 * time.Second},
		"no endpoint":         {func(o *Options) { o.Endpoints = nil }, false, "EndpointsFromManifest", 0},
		"not loopback":        {func(o *Options) { o.Endpoints = []string{"https://10.0.0.5:2379"} }, false, "loopback only", 0},
		"one not loopback":    {func(o *Options) { o.Endpoints = []string{refused, "https://localhost:2379"} }, false, "loopback", 0},
		"no destination":      {func(o *Options) { o.Dest = "" }, false, "no destination", 0},
		"no directory":        {func(o *Options) { o.Dest = filepath.Join(dir, "missing", "s.db") }, false, "no such file", 0},
		"destination is dir":  {func(o *Options) { o.Dest = filepath.Join(dir, "adir") }, false, "not a regular file", 0},
		"no key":              {func(o *Options) { o.CAKey = nil }, false, "no etcd CA key", 0},
		"expired CA":          {func(o *Options) { o.CACert, o.CAKey = expiredCA.certPEM, expiredCA.keyPEM }, false, "expired-ca.md", 0},
	} {
		o := base
		c.edit(&o)
		start := time.Now()
		_, err := Save(context.Background(), o)
		took := time.Since(start)
		if err == nil || errors.Is(err, ErrEtcdDown) != c.down || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v (ErrEtcdDown %v), want %q", name, err, errors.Is(err, ErrEtcdDown), c.want)
			continue
		}
		if c.max > 0 && took > c.max {
			t.Errorf("%s: took %s", name, took)
		}
		if name == "expired CA" && !errors.Is(err, ErrCAExpired) {
			t.Errorf("expired CA: %v is not ErrCAExpired", err)
		}
		texts = append(texts, err.Error())
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "adir" {
		t.Errorf("left in the destination dir: %v", got)
	}
	assertNoSecret(t, append(secretNeedles(t, ca.key, ca.keyPEM), secretNeedles(t, expiredCA.key, expiredCA.keyPEM)...), []string{dir}, texts...)

	// A cancelled context is not "etcd down".
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o := base
	o.Endpoints = []string{silentEP}
	if _, err := Save(ctx, o); err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// The leak scan sees a key however it is written: PEM (any encoding), the
// base64 of its DER inside a kubeconfig line, its raw scalar in a binary
// file, an error text.
func TestFindSecretsSeesKeys(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, "etcd-ca", now.Add(-time.Hour), now.AddDate(1, 0, 0))
	eca, _ := parseCA(ca.certPEM, ca.keyPEM)
	c, err := mintClient(eca, now)
	if err != nil {
		t.Fatal(err)
	}
	key := c.PrivateKey.(*ecdsa.PrivateKey)
	needles := secretNeedles(t, key)
	sec1, _ := x509.MarshalECPrivateKey(key)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	d, _ := key.Bytes()
	for name, content := range map[string][]byte{
		"sec1.pem":   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
		"pkcs8.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		"kubeconfig": []byte("users:\n- user:\n    client-key-data: " + base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})) + "\n"),
		"raw.bin":    append(append([]byte{0, 1, 2}, d...), 3, 4),
		"der":        pkcs8,
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, name), content, 0o600)
		if found, err := findSecrets(needles, []string{dir}, nil); err != nil || len(found) != 1 {
			t.Errorf("%s: found %v (%v)", name, found, err)
		}
	}
	if found, _ := findSecrets(needles, nil, nil, "oops: "+base64.StdEncoding.EncodeToString(sec1)); len(found) != 1 {
		t.Error("a key in an error text is not seen")
	}
	other, _ := pki.NewECKey()
	otherDER, _ := x509.MarshalPKCS8PrivateKey(other)
	if found, _ := findSecrets(needles, nil, nil, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherDER}))); len(found) != 0 {
		t.Error("another key of the same type is reported (the needles are not specific)")
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// A snapshot cut short or damaged in transit leaves the previous file at
// the destination and nothing beside it; a temporary file of a killed
// earlier run is removed.
func TestWriteSnapshotFailures(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "etcd-snapshot.db")
	os.WriteFile(dest, []byte("previous snapshot"), 0o600)
	stale := filepath.Join(dir, ".etcd-snapshot.db.kubecpr-12345")
	os.WriteFile(stale, []byte("half a snapshot from a killed run"), 0o600)
	body := bytes.Repeat([]byte("x"), 8192)
	sum := sha256.Sum256(body)
	for name, r := range map[string]io.Reader{
		"cut":      &failingReader{data: body[:5000], err: errors.New("rpc error: stream reset")},
		"damaged":  bytes.NewReader(append(append([]byte{}, body...), make([]byte, 32)...)),
		"not bolt": bytes.NewReader(append(append([]byte{}, body...), sum[:]...)),
		"empty":    bytes.NewReader(nil),
	} {
		_, err := writeSnapshot(r, dest)
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		t.Logf("%s: %v", name, err)
		if got := entries(t, dir); len(got) != 1 || got[0] != "etcd-snapshot.db" {
			t.Errorf("%s: the directory holds %v", name, got)
		}
		if b, _ := os.ReadFile(dest); string(b) != "previous snapshot" {
			t.Errorf("%s: the previous snapshot was changed", name)
		}
	}
}

// A member that is up but serves nothing (no quorum: every member of a
// fully expired cluster restarted before its peers) has its port bound and
// serves nothing on it, not even TLS: etcd 3.5 serves only once ready.
// Save says so after one timeout and does not wait again on the member's
// other addresses.
func TestSaveMemberWithoutQuorum(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, "etcd-ca", now.Add(-time.Hour), now.AddDate(10, 0, 0))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns atomic.Int32
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			held = append(held, c) // taken, never answered
		}
	}()
	ep := "https://" + l.Addr().String()
	const timeout = 300 * time.Millisecond
	o := Options{Endpoints: []string{ep, ep}, CACert: ca.certPEM, CAKey: ca.keyPEM,
		Dest: filepath.Join(t.TempDir(), "snap.db"), Timeout: timeout}
	start := time.Now()
	_, err = Save(context.Background(), o)
	took := time.Since(start)
	if !errors.Is(err, ErrEtcdDown) || !strings.Contains(err.Error(), "without quorum") {
		t.Fatalf("err %v, want ErrEtcdDown saying the member has no quorum", err)
	}
	if n := conns.Load(); n != 1 || took > 2*timeout+time.Second {
		t.Errorf("%d connections in %s: the member's second address was asked too", n, took)
	}
}

// With the member's metrics port saying it has no leader (etcd answers
// /health there from its start), a silent client port is a member without
// quorum after NoLeaderTimeout, not after the whole Timeout; the error
// quotes etcd's reason. With a leader, the client port gets its Timeout.
func TestSaveNoLeaderFromMetrics(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, "etcd-ca", now.Add(-time.Hour), now.AddDate(10, 0, 0))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // the kernel takes connections; nothing answers
	ep := "https://" + l.Addr().String()
	metrics := func(body string) string {
		m := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/health" {
				http.NotFound(w, r)
				return
			}
			io.WriteString(w, body)
		}))
		t.Cleanup(m.Close)
		return m.URL
	}
	o := Options{Endpoints: []string{ep}, CACert: ca.certPEM, CAKey: ca.keyPEM,
		Dest: filepath.Join(t.TempDir(), "snap.db"), Timeout: 4 * time.Second}

	o.MetricsURL = metrics(`{"health":"false","reason":"RAFT NO LEADER"}`)
	start := time.Now()
	_, err = Save(context.Background(), o)
	if took := time.Since(start); !errors.Is(err, ErrEtcdDown) || !strings.Contains(err.Error(), "RAFT NO LEADER") || took > NoLeaderTimeout+time.Second {
		t.Errorf("no leader: %v after %s, want ErrEtcdDown quoting RAFT NO LEADER within %s", err, took, NoLeaderTimeout)
	}

	o.MetricsURL = metrics(`{"health":"true","reason":""}`)
	o.Timeout = 1500 * time.Millisecond
	start = time.Now()
	_, err = Save(context.Background(), o)
	if took := time.Since(start); !errors.Is(err, ErrEtcdDown) || took < o.Timeout {
		t.Errorf("a leader: %v after %s, want the whole timeout (%s)", err, took, o.Timeout)
	}
}

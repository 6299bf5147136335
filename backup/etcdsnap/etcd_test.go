package etcdsnap

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/cluster"
)

// testClient is an etcd client with a certificate minted like Save's
// (the node's own client certificates have expired).
func testClient(t *testing.T, ep string, caCert, caKey []byte) *clientv3.Client {
	t.Helper()
	ca, err := parseCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mintClient(ca, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	hp, host, err := loopbackHostPort(ep)
	if err != nil {
		t.Fatal(err)
	}
	v := &serverVerifier{ca: ca, host: host, endpoint: hp, now: time.Now}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsConfig(c, v), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdctlStatus runs the real `etcdctl snapshot status FILE -w json`.
func etcdctlStatus(t *testing.T, bin, file string) Status {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "etcdctl"), "snapshot", "status", file, "-w", "json")
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("etcdctl snapshot status: %v\n%s%s", err, out, stderr.String())
	}
	var st Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("etcdctl snapshot status output %q: %v", out, err)
	}
	t.Logf("etcdctl snapshot status -w json: %s", strings.TrimSpace(string(out)))
	return st
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func fileSHA256(t *testing.T, p string) (string, int64) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), int64(len(b))
}

// TestRealEtcd runs real etcd v3.5.21 from a node laid out by real kubeadm
// (test/cluster), its serving and client certificates expired 48 h ago:
// the node kubecpr is for. A snapshot is taken with Save, checked with the
// real `etcdctl snapshot status`, restored with the real `etcdctl snapshot
// restore`, and etcd started on the restored data serves the keys.
func TestRealEtcd(t *testing.T) {
	n := cluster.Kubeadm(t, cluster.Options{})
	n.Expire(t, 48*time.Hour)
	server, err := pki.ParseCertificate(mustRead(t, n.Path("/etc/kubernetes/pki/etcd/server.crt")))
	if err != nil || !server.NotAfter.Before(time.Now()) {
		t.Fatalf("etcd's serving certificate should have expired: %v %v", err, server.NotAfter)
	}
	etcd := n.StartEtcd(t)

	manifest := mustRead(t, n.Path("/etc/kubernetes/manifests/etcd.yaml"))
	eps, err := EndpointsFromManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("https://127.0.0.1:%d", n.EtcdClientPort); len(eps) != 1 || eps[0] != want {
		t.Fatalf("endpoints from kubeadm's manifest: %v, want [%s]", eps, want)
	}
	caCert := mustRead(t, n.Path("/etc/kubernetes/pki/etcd/ca.crt"))
	caKeyPEM := mustRead(t, n.Path("/etc/kubernetes/pki/etcd/ca.key"))
	caKey, err := pki.ParsePrivateKey(caKeyPEM)
	if err != nil {
		t.Fatal(err)
	}

	// What the operator sees without kubecpr: the node's own client
	// certificate is refused.
	own := exec.Command(filepath.Join(n.Bin, "etcdctl"), "--endpoints="+eps[0],
		"--cacert="+n.Path("/etc/kubernetes/pki/etcd/ca.crt"),
		"--cert="+n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.crt"),
		"--key="+n.Path("/etc/kubernetes/pki/etcd/healthcheck-client.key"),
		"--dial-timeout=1s", "--command-timeout=1s", "get", "/x")
	own.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := own.CombinedOutput(); err == nil {
		t.Fatalf("etcdctl with the expired healthcheck-client certificate worked:\n%s", out)
	}

	var mintMu sync.Mutex
	var minted []crypto.Signer
	onMint = func(c tls.Certificate) {
		mintMu.Lock()
		minted = append(minted, c.PrivateKey.(crypto.Signer))
		mintMu.Unlock()
	}
	t.Cleanup(func() { onMint = nil })
	var errTexts []string

	// A few keys, written through a client of our own.
	ctx := context.Background()
	cli := testClient(t, eps[0], caCert, caKeyPEM)
	want := map[string]string{}
	var lastRev int64
	for i := 0; i < 20; i++ {
		k, v := fmt.Sprintf("/registry/kubecpr-test/k%02d", i), strings.Repeat(fmt.Sprintf("value-%d-", i), 50)
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put through the minted client: %v", err)
		}
		want[k], lastRev = v, resp.Header.Revision
	}
	// Enough data for branch pages in every direction of the bbolt
	// reader: 2048 keys in 16 transactions (128 operations each, etcd's
	// default limit), and a few values large enough for overflow pages.
	for txn := 0; txn < 16; txn++ {
		var ops []clientv3.Op
		for i := 0; i < 128; i++ {
			k := fmt.Sprintf("/registry/kubecpr-test/bulk/%02d-%03d", txn, i)
			v := strings.Repeat(fmt.Sprintf("%s;", k), 30)
			ops = append(ops, clientv3.OpPut(k, v))
			want[k] = v
		}
		resp, err := cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			t.Fatalf("txn: %v", err)
		}
		lastRev = resp.Header.Revision
	}
	for i := 0; i < 3; i++ {
		k := fmt.Sprintf("/registry/kubecpr-test/large/%d", i)
		v := strings.Repeat(fmt.Sprintf("large value %d, ", i), 300<<10/16)
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put large: %v", err)
		}
		want[k], lastRev = v, resp.Header.Revision
	}
	del, err := cli.Delete(ctx, "/registry/kubecpr-test/k07")
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete: %v", err)
	}
	delete(want, "/registry/kubecpr-test/k07")
	lastRev = del.Header.Revision
	cli.Close()

	destDir := t.TempDir()
	dest := filepath.Join(destDir, "etcd-snapshot.db")
	rehearsal := time.Now().AddDate(1, 0, 0) // --now a year ahead: the certificate must still use the real clock
	start := time.Now()
	res, err := Save(ctx, Options{Endpoints: eps, CACert: caCert, CAKey: caKeyPEM, Now: rehearsal, Dest: dest})
	if err != nil {
		t.Fatalf("Save: %v\netcd log:\n%s", err, etcd.LogTail(20))
	}
	t.Logf("Save took %s: %+v", time.Since(start).Round(time.Millisecond), res)

	if res.Path != dest || res.Endpoint != eps[0] || !res.Time.Equal(rehearsal) || res.Version != strings.TrimPrefix(cluster.EtcdVersion, "v") {
		t.Errorf("result %+v", res)
	}
	if res.Revision != lastRev {
		t.Errorf("revision %d, want %d (the last write)", res.Revision, lastRev)
	}
	sum, size := fileSHA256(t, dest)
	if sum != res.SHA256 || size != res.Size {
		t.Errorf("file sha256 %s size %d, result says %s %d", sum, size, res.SHA256, res.Size)
	}
	if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode: %v %v", st.Mode(), err)
	}
	if got := entries(t, destDir); len(got) != 1 || got[0] != "etcd-snapshot.db" {
		t.Errorf("destination holds %v, want only the snapshot", got)
	}

	// The real etcdctl agrees on everything it reports.
	ctl := etcdctlStatus(t, n.Bin, dest)
	if ctl.Revision != res.Revision || ctl.TotalKey != res.TotalKey || ctl.Hash != res.Hash || ctl.TotalSize != res.DBSize {
		t.Errorf("etcdctl snapshot status %+v, Save says revision %d totalKey %d hash %d size %d", ctl, res.Revision, res.TotalKey, res.Hash, res.DBSize)
	}
	if ctl.Revision != lastRev || ctl.TotalKey < len(want) {
		t.Errorf("etcdctl: revision %d (want %d), %d keys (want at least %d)", ctl.Revision, lastRev, ctl.TotalKey, len(want))
	}
	if ins, err := Inspect(dest); err != nil || ins != ctl {
		t.Errorf("Inspect: %+v %v, etcdctl %+v", ins, err, ctl)
	}

	t.Run("damaged copies are refused, never a panic", func(t *testing.T) {
		b := mustRead(t, dest)
		db := b[:len(b)-sha256.Size]
		dir := t.TempDir()
		bad := append([]byte{}, b...)
		bad[len(bad)/2] ^= 1
		p := filepath.Join(dir, "flipped.db")
		os.WriteFile(p, bad, 0o600)
		if _, err := Inspect(p); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("a flipped bit passes the sha256 check: %v", err)
		}
		// Without the trailer, mutations reach the bbolt reader: it may
		// refuse them or not notice (a flipped value byte), never panic
		// or loop.
		rng := rand.New(rand.NewSource(7))
		const rounds = 400
		refused := 0
		m := append([]byte{}, db...)
		for i := 0; i < rounds; i++ {
			var at []int
			for j := 0; j < 1+rng.Intn(8); j++ {
				var p int
				if i%2 == 0 { // page headers and elements, where damage matters
					p = rng.Intn(len(m)/4096)*4096 + rng.Intn(16+8*16)
				} else {
					p = rng.Intn(len(m))
				}
				at = append(at, p)
				m[p] = byte(rng.Intn(256))
			}
			if _, err := boltStatus(readerAt(m), int64(len(m))); err != nil {
				refused++
			}
			for _, p := range at {
				m[p] = db[p]
			}
		}
		t.Logf("bbolt reader: %d of %d mutated databases refused, none panicked", refused, rounds)
		if _, err := boltStatus(readerAt(db[:len(db)/2]), int64(len(db)/2)); err == nil {
			t.Error("a truncated database is accepted")
		}
	})

	t.Run("into the backup manifest", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "backups", "run-1")
		m, err := backup.Create(n.Root, dir, []string{"/etc/kubernetes"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		r, err := SaveToBackup(ctx, Options{Endpoints: eps, CACert: caCert, CAKey: caKeyPEM, Now: time.Now()}, m, dir)
		if err != nil {
			t.Fatal(err)
		}
		loaded, err := backup.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if e := loaded.EtcdSnapshot; e == nil || e.SHA256 != r.SHA256 || e.Size != r.Size || r.Path != filepath.Join(dir, "etcd", "snapshot.db") {
			t.Fatalf("manifest records %+v, result %+v", loaded.EtcdSnapshot, r)
		}
		if err := backup.Verify(dir); err != nil {
			t.Fatalf("backup.Verify: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(dir, BackupSnapshotName)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the download %s was left: %v", BackupSnapshotName, err)
		}
		if st := etcdctlStatus(t, n.Bin, r.Path); st.Revision != lastRev || st.Hash != r.Hash {
			t.Errorf("etcdctl on the backup's copy: %+v", st)
		}
		assertNoSecret(t, secretNeedles(t, caKey, caKeyPEM), []string{filepath.Join(dir, "etcd")})
	})

	t.Run("wrong CA", func(t *testing.T) {
		other := newTestCA(t, "etcd-ca", time.Now().Add(-time.Hour), time.Now().AddDate(1, 0, 0))
		dir := t.TempDir()
		_, err := Save(ctx, Options{Endpoints: eps, CACert: other.certPEM, CAKey: other.keyPEM, Dest: filepath.Join(dir, "s.db")})
		var se *ServerCertError
		if !errors.As(err, &se) || errors.Is(err, ErrEtcdDown) || !strings.Contains(err.Error(), "not signed by the etcd CA") {
			t.Fatalf("err %v, want a ServerCertError", err)
		}
		t.Log(err)
		errTexts = append(errTexts, err.Error())
		if got := entries(t, dir); len(got) != 0 {
			t.Errorf("left %v", got)
		}
	})

	t.Run("etcd does not trust the signing CA", func(t *testing.T) {
		// The server is verified with the real etcd CA, but the client
		// certificate is signed by another CA: etcd refuses it.
		other := newTestCA(t, "not-etcd-ca", time.Now().Add(-time.Hour), time.Now().AddDate(1, 0, 0))
		bundle := append(append([]byte{}, other.certPEM...), caCert...)
		dir := t.TempDir()
		_, err := Save(ctx, Options{Endpoints: eps, CACert: bundle, CAKey: other.keyPEM, Dest: filepath.Join(dir, "s.db")})
		var re *RejectedError
		if !errors.As(err, &re) || errors.Is(err, ErrEtcdDown) {
			t.Fatalf("err %v, want a RejectedError", err)
		}
		t.Log(err)
		errTexts = append(errTexts, err.Error())
		if got := entries(t, dir); len(got) != 0 {
			t.Errorf("left %v", got)
		}
	})

	t.Run("non-loopback endpoint", func(t *testing.T) {
		ep := fmt.Sprintf("https://%s:%d", cluster.NeverContacted, n.EtcdClientPort)
		_, err := Save(ctx, Options{Endpoints: []string{ep}, CACert: caCert, CAKey: caKeyPEM, Dest: filepath.Join(t.TempDir(), "s.db")})
		if err == nil || errors.Is(err, ErrEtcdDown) || !strings.Contains(err.Error(), "loopback") {
			t.Fatalf("err %v", err)
		}
	})

	// etcd stops: no snapshot, said at once.
	if err := etcd.Stop(); err != nil {
		t.Fatal(err)
	}
	downDir := t.TempDir()
	start = time.Now()
	_, err = Save(ctx, Options{Endpoints: eps, CACert: caCert, CAKey: caKeyPEM, Dest: filepath.Join(downDir, "s.db")})
	if !errors.Is(err, ErrEtcdDown) {
		t.Fatalf("etcd stopped: err %v, want ErrEtcdDown", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("etcd stopped: ErrEtcdDown after %s", d)
	}
	t.Logf("etcd stopped: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
	errTexts = append(errTexts, err.Error())
	if got := entries(t, downDir); len(got) != 0 {
		t.Errorf("left %v", got)
	}

	// Neither the CA key nor any minted key is in the destination or in an
	// error; no minted key anywhere in the node tree either.
	mintMu.Lock()
	if len(minted) < 5 {
		t.Errorf("only %d client certificates minted", len(minted))
	}
	needles := secretNeedles(t, caKey, caKeyPEM)
	var mintedNeedles [][]byte
	for _, k := range minted {
		mintedNeedles = append(mintedNeedles, secretNeedles(t, k)...)
	}
	mintMu.Unlock()
	assertNoSecret(t, append(needles, mintedNeedles...), []string{destDir, downDir}, errTexts...)
	// The whole node tree but etcd's data dir (its WAL files are 64 MB
	// each, and the snapshot scanned above is a copy of its database).
	assertNoSecretExcept(t, mintedNeedles, []string{n.Root}, []string{n.Path("/var/lib/etcd")})

	// The snapshot restores with the real etcdctl, and etcd started on it
	// serves the keys.
	restoreFromSnapshot(t, n, dest)
	n.StartEtcd(t)
	cli = testClient(t, eps[0], caCert, caKeyPEM)
	got, err := cli.Get(ctx, "/registry/kubecpr-test/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want) {
		t.Fatalf("restored etcd holds %d test keys, want %d", len(got.Kvs), len(want))
	}
	for _, kv := range got.Kvs {
		if want[string(kv.Key)] != string(kv.Value) {
			t.Errorf("restored %s = %.20q...", kv.Key, kv.Value)
		}
	}
	if got.Header.Revision < lastRev {
		t.Errorf("restored etcd at revision %d, snapshot was %d", got.Header.Revision, lastRev)
	}
}

// restoreFromSnapshot replaces the node's etcd data dir with one restored
// by the real `etcdctl snapshot restore`, with the member name and peer
// URLs of the manifest.
func restoreFromSnapshot(t *testing.T, n *cluster.Node, snap string) {
	t.Helper()
	flags := flagMap(n.Manifest(t, "etcd"))
	data := n.Path(flags["data-dir"])
	if err := os.Rename(data, data+".before-restore"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(n.Bin, "etcdctl"), "snapshot", "restore", snap,
		"--data-dir", data, "--name", flags["name"],
		"--initial-cluster", flags["initial-cluster"],
		"--initial-advertise-peer-urls", flags["initial-advertise-peer-urls"])
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("etcdctl snapshot restore: %v\n%s", err, out)
	}
}

type readerAt []byte

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(r)) {
		return 0, fmt.Errorf("offset %d out of range", off)
	}
	n := copy(p, r[off:])
	if n < len(p) {
		return n, fmt.Errorf("short read")
	}
	return n, nil
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

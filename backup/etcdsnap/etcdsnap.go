package etcdsnap

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/recovery/atomicfile"
)

// Defaults of Options.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultTransferTimeout = 10 * time.Minute
	// NoLeaderTimeout is how long a member whose metrics port says it has
	// no leader gets to answer on its client port. A member that was
	// ready once serves snapshots with or without a leader and answers in
	// milliseconds; one that never had a quorum since it started serves
	// nothing (etcd 3.5 serves clients once the member is ready).
	NoLeaderTimeout = time.Second
)

// ErrEtcdDown is wrapped by Save's error when etcd does not answer on any
// endpoint: the connection is refused, or nothing answers within
// Options.Timeout (NoLeaderTimeout for a member that says it has no
// leader). The caller says so ("no etcd snapshot: etcd is not answering
// ...") and goes on. Every other failure (a wrong CA, etcd refusing the client
// certificate, a damaged snapshot, a full disk) is a different error.
var ErrEtcdDown = errors.New("etcd is not answering")

// errNotServing marks an endpoint that took the connection and then
// answered nothing, not even the TLS handshake: the port is bound but
// nothing is served. etcd 3.5 serves its client port only once the member
// is ready, which needs a quorum: a member whose peers are down, or present
// expired certificates (every member of a fully expired cluster), is in
// that state until a leader is elected. Every address of one member is
// then silent alike, so Save asks no other.
var errNotServing = errors.New("etcd takes connections but serves nothing")

// Options of Save.
type Options struct {
	// Endpoints are etcd client URLs, https:// with a loopback IP
	// (https://127.0.0.1:2379), tried in order; see EndpointsFromManifest.
	// All are addresses of one member (the node's own etcd, as
	// EndpointsFromManifest reads them): a member that is up but serves
	// nothing on one is not asked again on the others.
	Endpoints []string
	// MetricsURL is the member's plain-http metrics URL on loopback
	// (MetricsFromManifest; "" when unknown). When its /health says the
	// member has no leader, a client endpoint silent for NoLeaderTimeout
	// is taken for a member without quorum at once, instead of after
	// Timeout.
	MetricsURL string
	// CACert and CAKey are the PEM contents of the etcd CA
	// (/etc/kubernetes/pki/etcd/ca.crt and ca.key, the etcd manifest's
	// --trusted-ca-file and its key), read by the caller through the node.
	// The key signs a short-lived client certificate in memory; it is
	// never written, printed or put in an error.
	CACert, CAKey []byte
	// Now is the run's clock (--now; a rehearsal may be months ahead). It
	// dates Result.Time only. The client certificate is dated on the
	// machine's real clock, because etcd checks it against that clock.
	Now time.Time
	// Dest is the host path of the snapshot file to write (its directory
	// must exist). It is written atomically: a temporary file beside it
	// (0600), fsync, rename, fsync of the directory. An existing regular
	// file there is replaced.
	Dest string
	// Timeout is how long etcd has to answer: TCP connect, TLS handshake,
	// the first request (default DefaultTimeout).
	Timeout time.Duration
	// TransferTimeout bounds the whole download (default
	// DefaultTransferTimeout).
	TransferTimeout time.Duration
}

// Result describes a snapshot written by Save.
type Result struct {
	// Path is Options.Dest.
	Path string `json:"path"`
	// Size is the file's size in bytes: the database and the 32-byte
	// sha256 etcd appends to it.
	Size int64 `json:"size"`
	// SHA256 is the hex sha256 of the whole file, as
	// backup.Manifest.AddEtcdSnapshot records it.
	SHA256 string `json:"sha256"`
	// Revision, TotalKey, Hash and DBSize are what `etcdctl snapshot
	// status` reports for the file (see Status).
	Revision int64  `json:"revision"`
	TotalKey int    `json:"totalKey"`
	Hash     uint32 `json:"hash"`
	DBSize   int64  `json:"dbSize"`
	// Endpoint is the URL the snapshot was taken from.
	Endpoint string `json:"endpoint"`
	// Version is the etcd server's version.
	Version string `json:"version"`
	// Time is Options.Now.
	Time time.Time `json:"time"`
}

// Save takes a snapshot of the etcd answering on o.Endpoints and writes it
// to o.Dest.
//
// It signs, in memory, an ECDSA P-256 client certificate (CN
// ClientCommonName, client auth) with the etcd CA, valid ten minutes on the
// real clock; connects to the first endpoint that answers with etcd's own
// client (go.etcd.io/etcd/client/v3), accepting a serving certificate that
// has expired as long as it chains to the etcd CA (see serverVerifier);
// checks there is room for the database (backup.CheckSpace); streams
// Maintenance.Snapshot into a temporary file beside o.Dest; checks the
// sha256 etcd appends against the data received and reads the database
// (Inspect); and renames the file into place durably.
//
// Errors: ErrEtcdDown when no endpoint answers (refused, or silent for
// o.Timeout); *ServerCertError when a server answers with a certificate the
// etcd CA did not issue; *RejectedError when etcd refuses the client
// certificate; ErrCAExpired when the CA is not valid on the real clock;
// otherwise an error saying what failed and what to do. On error o.Dest is
// left as it was and no temporary file remains.
func Save(ctx context.Context, o Options) (Result, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.TransferTimeout <= 0 {
		o.TransferTimeout = DefaultTransferTimeout
	}
	if len(o.Endpoints) == 0 {
		return Result{}, errors.New("no etcd endpoint given: read them from the etcd manifest with EndpointsFromManifest")
	}
	for _, ep := range o.Endpoints {
		if _, _, err := loopbackHostPort(ep); err != nil {
			return Result{}, err
		}
	}
	if o.Dest == "" {
		return Result{}, errors.New("no destination given for the etcd snapshot")
	}
	dir := filepath.Dir(o.Dest)
	if st, err := os.Stat(dir); err != nil {
		return Result{}, fmt.Errorf("etcd snapshot destination: %w", err)
	} else if !st.IsDir() {
		return Result{}, fmt.Errorf("etcd snapshot destination: %s is not a directory", dir)
	}
	if st, err := os.Lstat(o.Dest); err == nil && !st.Mode().IsRegular() {
		return Result{}, fmt.Errorf("etcd snapshot destination %s exists and is not a regular file: refusing to replace it", o.Dest)
	}
	ca, err := parseCA(o.CACert, o.CAKey)
	if err != nil {
		return Result{}, err
	}
	client, err := mintClient(ca, time.Now())
	if err != nil {
		return Result{}, err
	}
	probeTimeout := o.Timeout
	reason := NoLeader(ctx, o.MetricsURL)
	if reason != "" && NoLeaderTimeout < probeTimeout {
		probeTimeout = NoLeaderTimeout
	}
	var down []error
	for _, ep := range o.Endpoints {
		res, err := saveFrom(ctx, o, ca, client, ep, probeTimeout)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, ErrEtcdDown) || ctx.Err() != nil {
			return Result{}, err
		}
		if errors.Is(err, errNotServing) {
			if reason != "" {
				err = fmt.Errorf("%w; its metrics port %s says %q", err, o.MetricsURL, reason)
			}
			down = append(down, err)
			break // the same member on its other addresses: as silent
		}
		down = append(down, err)
	}
	if len(down) == 1 {
		return Result{}, down[0]
	}
	msgs := make([]string, len(down))
	for i, e := range down {
		msgs[i] = strings.TrimPrefix(e.Error(), ErrEtcdDown.Error()+" ")
	}
	return Result{}, fmt.Errorf("%w on any endpoint: %s", ErrEtcdDown, strings.Join(msgs, "; "))
}

// NoLeader asks the member's metrics port (plain http, loopback only; see
// MetricsFromManifest) for /health and returns etcd's reason when it says
// the member has no leader ("RAFT NO LEADER"); "" for any other answer, or
// none within a second. etcd answers there from its start, whatever its
// certificates: it is how a member without quorum is told from one that
// is merely slow.
func NoLeader(ctx context.Context, metricsURL string) string {
	if metricsURL == "" {
		return ""
	}
	if u, err := url.Parse(metricsURL); err != nil || u.Scheme != "http" || net.ParseIP(u.Hostname()) == nil || !net.ParseIP(u.Hostname()).IsLoopback() {
		return ""
	}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(metricsURL, "/")+"/health", nil)
	if err != nil {
		return ""
	}
	resp, err := hc.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var h struct{ Health, Reason string }
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&h); err != nil {
		return ""
	}
	if h.Health == "false" && strings.Contains(strings.ToUpper(h.Reason), "NO LEADER") {
		return h.Reason
	}
	return ""
}

// downError wraps ErrEtcdDown with the endpoint and the cause.
func downError(ep string, format string, args ...any) error {
	return fmt.Errorf("%w on %s: %s", ErrEtcdDown, ep, fmt.Sprintf(format, args...))
}

// saveFrom takes the snapshot from one endpoint.
func saveFrom(ctx context.Context, o Options, ca *etcdCA, client tls.Certificate, ep string, probeTimeout time.Duration) (Result, error) {
	hostport, host, _ := loopbackHostPort(ep)
	v := &serverVerifier{ca: ca, host: host, endpoint: ep, now: time.Now}
	cfg := tlsConfig(client, v)

	if err := probe(ctx, ep, hostport, cfg, v, probeTimeout); err != nil {
		return Result{}, err
	}

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{ep},
		TLS:         cfg,
		DialTimeout: o.Timeout,
		Context:     ctx,
		// The client's default logger writes to stderr; kubecpr reports
		// through its own errors.
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithNoProxy()},
	})
	if err != nil {
		return Result{}, explain(ep, v, fmt.Errorf("connecting: %w", err))
	}
	defer cli.Close()

	sctx, cancel := context.WithTimeout(ctx, o.Timeout)
	st, err := cli.Status(sctx, ep)
	cancel()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && v.lastError() == nil {
			return Result{}, downError(ep, "its status request got no answer within %s", o.Timeout)
		}
		return Result{}, explain(ep, v, fmt.Errorf("asking its status: %w", err))
	}
	if st.DbSize > 0 {
		if err := backup.CheckSpace(filepath.Dir(o.Dest), uint64(st.DbSize)); err != nil {
			return Result{}, fmt.Errorf("no room for the etcd snapshot (%d bytes): %w", st.DbSize, err)
		}
	}

	tctx, cancel := context.WithTimeout(ctx, o.TransferTimeout)
	defer cancel()
	rc, err := cli.Snapshot(tctx)
	if err != nil {
		return Result{}, explain(ep, v, fmt.Errorf("starting the snapshot: %w", err))
	}
	defer rc.Close()
	res, err := writeSnapshot(rc, o.Dest)
	if err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return Result{}, fmt.Errorf("the etcd snapshot from %s did not finish within %s (%v): raise the transfer timeout, or check etcd's disk and load", ep, o.TransferTimeout, err)
		}
		return Result{}, fmt.Errorf("etcd snapshot from %s: %w", ep, err)
	}
	res.Endpoint, res.Version, res.Time = ep, st.Version, o.Now
	return res, nil
}

// probe makes one plain HTTPS request (GET /version over HTTP/1.1) with
// the snapshot's TLS configuration before gRPC is involved, because gRPC
// retries a failing connection and then reports only "deadline exceeded".
// Here a refused connection or silence is ErrEtcdDown at once, a server
// that is not etcd is a *ServerCertError, and etcd refusing the client
// certificate is said as such. Any HTTP answer, whatever its status, means
// TLS passed both ways; so does a completed handshake followed by anything
// but a TLS alert or silence.
func probe(ctx context.Context, ep, hostport string, cfg *tls.Config, v *serverVerifier, timeout time.Duration) error {
	dialer := &net.Dialer{Timeout: timeout}
	tr := &http.Transport{
		Proxy:                 nil, // loopback only: never a proxy from the environment
		DialContext:           dialer.DialContext,
		TLSClientConfig:       cfg,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		DisableKeepAlives:     true,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var connected, handshakeOK atomic.Bool
	trace := &httptrace.ClientTrace{
		ConnectDone: func(_, _ string, err error) {
			if err == nil {
				connected.Store(true)
			}
		},
		TLSHandshakeDone: func(_ tls.ConnectionState, err error) {
			if err == nil {
				handshakeOK.Store(true)
			}
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, "https://"+hostport+"/version", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("etcd snapshot from %s: %w", ep, ctx.Err())
	}
	if verr := v.lastError(); verr != nil {
		return verr
	}
	var op *net.OpError
	if errors.As(err, &op) {
		switch op.Op {
		case "dial":
			return downError(ep, "%v", op.Err)
		case "remote error":
			return &RejectedError{Endpoint: ep, Err: op.Err}
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		if connected.Load() {
			return fmt.Errorf("%w on %s: no answer within %s after it took the connection (%w: a member without quorum, its peers down or presenting expired certificates, serves no request until a leader is elected)",
				ErrEtcdDown, ep, timeout, errNotServing)
		}
		return downError(ep, "no answer within %s", timeout)
	}
	if handshakeOK.Load() {
		// TLS passed and etcd sent no alert, but the port does not
		// answer HTTP/1.1: an etcd serving only gRPC there (its HTTP API
		// moved with --listen-client-http-urls). Let the gRPC client try.
		return nil
	}
	return fmt.Errorf("etcd at %s accepted the connection but the TLS exchange failed: %w; is it etcd on that port?", ep, err)
}

// RejectedError reports that etcd refused the client certificate Save
// signed with the etcd CA given.
type RejectedError struct {
	Endpoint string
	Err      error // the TLS alert etcd sent
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("etcd at %s refused the client certificate kubecpr signed with the etcd CA given (%v): "+
		"etcd does not trust that CA for clients; pass the CA named by the etcd manifest's --trusted-ca-file "+
		"(normally /etc/kubernetes/pki/etcd/ca.crt and ca.key); if it is that CA, check the machine's clock", e.Endpoint, e.Err)
}

func (e *RejectedError) Unwrap() error { return e.Err }

// explain turns an error of etcd's client into one that says what to do.
func explain(ep string, v *serverVerifier, err error) error {
	if verr := v.lastError(); verr != nil {
		return verr
	}
	if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserNotFound) || errors.Is(err, rpctypes.ErrUserEmpty) {
		return fmt.Errorf("etcd at %s: %w: etcd has authentication enabled and takes the client certificate's CN %q as the user; "+
			"grant that user the root role, or take the snapshot with etcdctl as root", ep, err, ClientCommonName)
	}
	return fmt.Errorf("etcd at %s: %w", ep, err)
}

// writeSnapshot streams a snapshot into a temporary file beside dest
// (0600), checks it (the sha256 etcd appends, then the database itself),
// fsyncs it, renames it over dest and fsyncs the directory. On error the
// temporary file is removed and dest is left as it was. Temporary files of
// an earlier, interrupted call for the same dest are removed first.
func writeSnapshot(r io.Reader, dest string) (res Result, err error) {
	dir := filepath.Dir(dest)
	prefix := atomicfile.TempPrefix(dest)
	// Temporary files of an earlier Save to the same destination that was
	// killed: snapshots of etcd (its whole data), not to be left lying.
	atomicfile.SweepTemps(dest)
	tmp, err := os.CreateTemp(dir, prefix+"*")
	if err != nil {
		return Result{}, fmt.Errorf("creating a temporary file beside %s: %w", dest, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return Result{}, err
	}
	whole, body := sha256.New(), newTrailer()
	n, err := io.Copy(io.MultiWriter(tmp, whole, body), r)
	if err != nil {
		return Result{}, fmt.Errorf("receiving the snapshot (%d bytes so far): %w", n, err)
	}
	if n <= sha256.Size || !body.ok() {
		err = fmt.Errorf("the snapshot received (%d bytes) is damaged: its data do not match the sha256 etcd sent after them; take it again", n)
		return Result{}, err
	}
	if err = tmp.Sync(); err != nil {
		return Result{}, fmt.Errorf("fsync %s: %w", tmpName, err)
	}
	st, err := boltStatus(tmp, n-sha256.Size)
	if err != nil {
		return Result{}, fmt.Errorf("the snapshot received is not a usable etcd database: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return Result{}, err
	}
	if st2, lerr := os.Lstat(dest); lerr == nil && !st2.Mode().IsRegular() {
		err = fmt.Errorf("%s became a %v: refusing to replace it", dest, st2.Mode().Type())
		return Result{}, err
	} else if lerr != nil && !errors.Is(lerr, fs.ErrNotExist) {
		err = lerr
		return Result{}, err
	}
	if err = os.Rename(tmpName, dest); err != nil {
		return Result{}, fmt.Errorf("renaming the snapshot into place: %w", err)
	}
	if err = atomicfile.SyncDir(dir); err != nil {
		return Result{}, err
	}
	return Result{Path: dest, Size: n, SHA256: hex.EncodeToString(whole.Sum(nil)),
		Revision: st.Revision, TotalKey: st.TotalKey, Hash: st.Hash, DBSize: st.TotalSize}, nil
}

// BackupSnapshotName is the file, inside a backup directory, a snapshot is
// downloaded to by SaveToBackup before AddEtcdSnapshot copies it to
// etcd/snapshot.db; it is removed afterwards.
const BackupSnapshotName = "etcd-snapshot.download"

// SaveToBackup takes the snapshot (Save, o.Dest ignored) into the backup
// directory dir of manifest m: it downloads to dir/BackupSnapshotName, then
// m.AddEtcdSnapshot copies it to dir/etcd/snapshot.db, records its size and
// sha256 and saves the manifest, and the download is removed. The disk
// needs room for the database twice while it runs. Result.Path is the
// copy in the backup. Errors are Save's, or the backup's.
func SaveToBackup(ctx context.Context, o Options, m *backup.Manifest, dir string) (Result, error) {
	if m == nil {
		return Result{}, errors.New("no backup manifest: create the backup first (backup.Create)")
	}
	o.Dest = filepath.Join(dir, BackupSnapshotName)
	res, err := Save(ctx, o)
	if err != nil {
		return Result{}, err
	}
	defer atomicfile.Remove(o.Dest)
	if err := m.AddEtcdSnapshot(dir, o.Dest); err != nil {
		return Result{}, fmt.Errorf("recording the etcd snapshot in the backup %s: %w", dir, err)
	}
	if e := m.EtcdSnapshot; e == nil || e.SHA256 != res.SHA256 || e.Size != res.Size {
		return Result{}, fmt.Errorf("the etcd snapshot copied into the backup %s differs from the one downloaded: check the disk, then run again", dir)
	}
	res.Path = filepath.Join(dir, filepath.FromSlash(m.EtcdSnapshot.Blob))
	return res, nil
}

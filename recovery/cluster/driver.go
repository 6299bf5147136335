package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	cinv "github.com/kubecpr/kubecpr/recovery/cluster/inventory"
	"github.com/kubecpr/kubecpr/recovery/cluster/transport"
	"github.com/kubecpr/kubecpr/recovery/crashpoint"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Phases of a cluster run, in order.
const (
	PhaseOffline = "offline" // control planes: diagnose, backup, certs, kubeconfigs
	PhaseRestart = "restart" // control planes, all at once: bounce, csr, verify
	PhaseWorkers = "workers" // workers: kubelet credential, kubelet restart
	PhaseVerify  = "verify"  // every node: nothing expired, the kubelet authenticates
)

// ErrRefused marks a cluster run stopped before any change on any node.
var ErrRefused = errors.New("nothing was changed on any node")

// BundleNodePath is where a worker's signed kubelet bundle is put (0600)
// until the worker's run has installed it; it is removed afterwards.
const BundleNodePath = "/var/lib/kubecpr/incoming/kubelet-client.pem"

// RemoteBinary is where the driver copies itself on an SSH node.
const RemoteBinary = "/var/lib/kubecpr/bin/kubecpr"

// Options configure a cluster run. RunArgs and LiveArgs are node-level
// kubecpr flags: RunArgs go to every node run (renewal and live options,
// recorded in the cluster journal so resume passes the same), LiveArgs to
// node rollbacks. A node's own inventory Args are added to both.
type Options struct {
	Inventory  *cinv.Inventory
	Binary     string // this kubecpr, run for root: nodes and copied to SSH nodes
	StateDir   string // host path of the driving node's state dir
	GlobalArgs []string
	RunArgs    []string
	// RecordedRunArgs, when set, are journaled instead of RunArgs: the
	// run's flags as given (--renew-ca, which the driver acts on itself
	// and does not pass to the nodes).
	RecordedRunArgs []string
	LiveArgs        []string
	Workers         string // bundle (default) or bootstrap
	Parallel        int
	// CA signs the workers' kubelet bundles (the cluster CA with its key,
	// from a control-plane node's tree).
	CA       *pki.CA
	CAFrom   string // recorded: the inventory node CA came from ("" for the driving node)
	Now      time.Time
	Validity time.Duration
	Out      io.Writer

	// Control is the control-plane tree on this machine (the driving
	// node's --root, or --ca-from): its admin.conf reaches the recovered
	// API (--workers bootstrap) and its etcd CA signs verify's etcd client.
	Control *node.Node
	// BootstrapTTL is the lifetime of --workers bootstrap's token,
	// BootstrapWait how long each worker's kubelet may take to
	// authenticate again (defaults DefaultBootstrapTTL, DefaultBootstrapWait).
	BootstrapTTL, BootstrapWait time.Duration

	// CACerts are CA certificates (PEM) re-issued once for the whole run
	// (--renew-ca), by CA name: every control plane gets all of them,
	// every worker the cluster CA's, with --ca-certificate, so that the
	// same new certificate is trusted everywhere.
	CACerts map[string][]byte

	// Dial connects to a node; nil uses Connect.
	Dial func(ctx context.Context, n cinv.Node) (transport.Transport, error)
}

// Driver runs one cluster run.
type Driver struct {
	o       Options
	runID   string
	j       *journal.Journal
	mu      sync.Mutex
	records []journal.Record
	results map[string]*result
	conns   map[string]transport.Transport

	checks verifyState // what verify proved, node by node

	sumOnce sync.Once // sha256 of Binary, for the uploads
	sum     string
	sumErr  error
}

type result struct {
	node, role, phase, state string
	took                     time.Duration
}

// Connect dials a node: a local transport for root: nodes, SSH otherwise.
func Connect(ctx context.Context, n cinv.Node) (transport.Transport, error) {
	if n.SSH == nil {
		return transport.NewLocal(n.Name), nil
	}
	cfg := transport.SSHConfig{Node: n.Name, User: n.SSH.User, Host: n.SSH.Host, Port: n.SSH.Port,
		IdentityFile: n.SSH.IdentityFile, UseAgent: n.SSH.Agent, Sudo: n.SSH.Sudo, Timeout: 15 * time.Second}
	if n.SSH.KnownHosts != "" {
		cfg.KnownHostsFiles = []string{n.SSH.KnownHosts}
	}
	return transport.DialSSH(ctx, cfg)
}

func (o *Options) defaults() {
	if o.Workers == "" {
		o.Workers = "bundle"
	}
	if o.Parallel <= 0 {
		o.Parallel = 10
	}
	if o.Dial == nil {
		o.Dial = Connect
	}
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
}

func (d *Driver) dir() string { return filepath.Join(d.o.StateDir, "cluster") }
func (d *Driver) journalPath() string {
	return filepath.Join(d.dir(), d.runID, "journal.log")
}

// CurrentRun is the id of the last cluster run and its records.
func CurrentRun(stateDir string) (string, []journal.Record, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "cluster", "current"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	id := strings.TrimSpace(string(b))
	recs, err := journal.ReadFile(filepath.Join(stateDir, "cluster", id, "journal.log"))
	if err == nil && (len(recs) == 0 || recs[0].Kind != journal.KindRunStart) {
		err = fmt.Errorf("%w: cluster journal of run %s lost its records", journal.ErrCorrupt, id)
	}
	return id, recs, err
}

// Status of a cluster run's records: open, complete or rolled-back.
func Status(recs []journal.Record) string {
	st := "open"
	for _, r := range recs {
		if r.Kind == journal.KindRunEnd {
			st = r.Data["status"]
		}
	}
	return st
}

// Record is what a cluster run's start record keeps: resume and rollback
// work with exactly these.
type Record = journal.ClusterStart

func inventorySum(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// Recorded returns the options a cluster run was started with.
func Recorded(recs []journal.Record) (*Record, error) {
	for _, r := range recs {
		if r.Kind == journal.KindRunStart {
			if r.Cluster == nil {
				return nil, fmt.Errorf("%w: cluster run-start record %d holds no cluster options", journal.ErrCorrupt, r.Seq)
			}
			rc := *r.Cluster
			return &rc, nil
		}
	}
	return nil, fmt.Errorf("%w: no cluster run-start record", journal.ErrCorrupt)
}

// New prepares a driver: it continues the open cluster run, if any (the
// caller has made its options the recorded ones), else starts a new one.
func New(o Options) (*Driver, bool, error) {
	o.defaults()
	d := &Driver{o: o, results: map[string]*result{}, conns: map[string]transport.Transport{}}
	id, recs, err := CurrentRun(o.StateDir)
	if err != nil {
		return nil, false, err
	}
	continued := id != "" && Status(recs) == "open"
	if continued {
		d.runID = id
	} else {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		d.runID = o.Now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
	}
	return d, continued, nil
}

// Existing returns a driver for the recorded cluster run id (rollback of
// a complete run).
func Existing(o Options, id string) *Driver {
	o.defaults()
	return &Driver{o: o, runID: id, results: map[string]*result{}, conns: map[string]transport.Transport{}}
}

// RunID is the cluster run's id.
func (d *Driver) RunID() string { return d.runID }

func (d *Driver) open(continued bool) error {
	if err := os.MkdirAll(filepath.Dir(d.journalPath()), 0o700); err != nil {
		return err
	}
	j, err := journal.Open(d.journalPath())
	if err != nil {
		return err
	}
	d.j, d.records = j, j.Records()
	if continued {
		return nil
	}
	sum, err := inventorySum(d.o.Inventory.Source)
	if err != nil {
		return err
	}
	recorded := d.o.RunArgs
	if d.o.RecordedRunArgs != nil {
		recorded = d.o.RecordedRunArgs
	}
	start := &Record{Inventory: d.o.Inventory.Source, InventorySHA256: sum, GlobalArgs: d.o.GlobalArgs,
		RunArgs: recorded, LiveArgs: d.o.LiveArgs, Workers: d.o.Workers, CAFrom: d.o.CAFrom, Parallel: d.o.Parallel}
	if err := d.append(journal.Record{Kind: journal.KindRunStart, Cluster: start}); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(d.dir(), "current"), []byte(d.runID+"\n"), atomicfile.Options{Mode: 0o600})
}

func (d *Driver) append(r journal.Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r.RunID = d.runID
	out, err := d.j.Append(r)
	if err != nil {
		return fmt.Errorf("cluster journal %s: %w", d.journalPath(), err)
	}
	d.records = append(d.records, out)
	crashpoint.At(crashpoint.ClusterRecord)
	return nil
}

// done reports whether the journal shows action done (and not undone).
func (d *Driver) done(action string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := false
	for _, r := range d.records {
		if r.Action != action {
			continue
		}
		switch r.Kind {
		case journal.KindDone:
			st = true
		case journal.KindIntent, journal.KindUndone, journal.KindFailed:
			st = false
		}
	}
	return st
}

// touched reports whether any intent was recorded for a node.
func (d *Driver) touched(nodeName string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.records {
		if r.Kind == journal.KindIntent && strings.HasSuffix(r.Action, "/"+nodeName) {
			return true
		}
	}
	return false
}

// Close releases the journal and the connections.
func (d *Driver) Close() {
	for _, c := range d.conns {
		_ = c.Close()
	}
	if d.j != nil {
		_ = d.j.Close()
	}
}

type namedNode struct{ cinv.Node }

func (n namedNode) Name() string { return n.Node.Name }

func wrap(nodes []cinv.Node) []namedNode {
	out := make([]namedNode, len(nodes))
	for i, n := range nodes {
		out[i] = namedNode{n}
	}
	return out
}

func (d *Driver) conn(ctx context.Context, n cinv.Node) (transport.Transport, error) {
	d.mu.Lock()
	c := d.conns[n.Name]
	d.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := d.o.Dial(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	d.mu.Lock()
	d.conns[n.Name] = c
	d.mu.Unlock()
	return c, nil
}

// binary is the kubecpr a node runs: this one for root: nodes, the copy
// uploaded by Prepare on SSH nodes.
func (d *Driver) binary(n cinv.Node) string {
	if n.SSH == nil {
		return d.o.Binary
	}
	return hostPath(n, RemoteBinary)
}

// hostPath is where node path p is, as the node's kubecpr process sees it.
//
// A local root: tree goes through kubecpr's one rooted resolver, so a
// linked /var/lib/kubecpr in a copy never sends the bundle (a private key)
// outside it. A remote root is joined as written: its links are resolved
// by the remote kubecpr, not from here.
func hostPath(n cinv.Node, p string) string {
	switch {
	case n.Root != "" && n.SSH == nil:
		if _, host, err := node.ResolveIn(n.Root, p, false); err == nil {
			return host
		}
		return filepath.Join(n.Root, filepath.FromSlash(p))
	case n.Root != "":
		return filepath.Join(n.Root, filepath.FromSlash(p))
	}
	return p
}

// argv is the command line of the node's kubecpr with args: its binary,
// the node's root when it has one, the run's global flags.
func (d *Driver) argv(n cinv.Node, args ...string) []string {
	argv := []string{d.binary(n)}
	if n.Root != "" {
		argv = append(argv, "--root", n.Root)
	}
	return append(append(argv, d.o.GlobalArgs...), args...)
}

// kubecpr runs the node's kubecpr with args, its output prefixed with the
// node's name. Captured output (stdout only) is returned when capture is
// set instead of being shown.
func (d *Driver) kubecpr(ctx context.Context, n cinv.Node, capture bool, args ...string) (string, error) {
	t, err := d.conn(ctx, n)
	if err != nil {
		return "", err
	}
	argv := d.argv(n, args...)
	prefix := fmt.Sprintf("[%s] ", n.Name)
	errw := transport.PrefixWriter(d.o.Out, prefix)
	defer errw.Close()
	outw := transport.PrefixWriter(d.o.Out, prefix)
	defer outw.Close()
	for wait := time.Second; ; wait *= 2 {
		var out bytes.Buffer
		var w io.Writer = outw
		if capture {
			w = &out
		}
		err := t.Run(ctx, argv, w, errw)
		// Exit 4: the node's lock is held — typically by the node run of
		// a driver that was killed, still stopping. Wait for it, a while.
		var ee *transport.ExitError
		if errors.As(err, &ee) && ee.Code == lockedExit && wait <= 32*time.Second {
			fmt.Fprintf(errw, "the node's lock is held; waiting %s\n", wait)
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(wait):
			}
			continue
		}
		return out.String(), err
	}
}

// lockedExit is kubecpr's exit code for a node lock held by another run.
const lockedExit = 4

// Prepare connects to every node, copies kubecpr to SSH nodes, and
// cross-checks the inventory with what the nodes say about themselves:
// a wrong inventory stops here, before any change anywhere.
func (d *Driver) Prepare(ctx context.Context) error {
	inv := d.o.Inventory
	if err := d.checkWorkersMode(); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	facts := map[string]*Facts{}
	var mu sync.Mutex
	res := transport.FanOut(ctx, wrap(inv.Nodes), d.o.Parallel, func(ctx context.Context, n namedNode) error {
		if n.SSH != nil {
			if err := d.upload(ctx, n.Node); err != nil {
				return err
			}
		}
		out, err := d.kubecpr(ctx, n.Node, true, "facts", "-o", "json")
		if err != nil {
			return fmt.Errorf("reading its facts: %w", err)
		}
		var f Facts
		if err := json.Unmarshal([]byte(out), &f); err != nil {
			return fmt.Errorf("reading its facts: %v", err)
		}
		mu.Lock()
		facts[n.Node.Name] = &f
		mu.Unlock()
		return nil
	})
	if err := transport.JoinErrors(res); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	var problems []error
	var caNode, caSum string
	cps := inv.ControlPlanes()
	for _, n := range inv.Nodes {
		f := facts[n.Name]
		if f.NodeName != "" && f.NodeName != n.Name {
			problems = append(problems, fmt.Errorf("%s: inventory node %q is node %q by its own certificates: fix the name or the address in the inventory", inv.Source, n.Name, f.NodeName))
		}
		if string(n.Role) != f.Role {
			problems = append(problems, fmt.Errorf("%s: node %s is a %s in the inventory but its files are a %s's", inv.Source, n.Name, n.Role, f.Role))
		}
		sum := f.CASHA256
		if f.CAIdentity != "" {
			sum = f.CAIdentity // a re-issued CA certificate is the same CA
		}
		if caSum == "" {
			caNode, caSum = n.Name, sum
		} else if sum != caSum {
			problems = append(problems, fmt.Errorf("node %s has another cluster CA than node %s (sha256 %.12s… vs %.12s…): it belongs to another cluster; remove it from the inventory %s", n.Name, caNode, sum, caSum, inv.Source))
		}
	}
	if len(cps) > 0 {
		var names []string
		for _, n := range cps {
			names = append(names, n.Name)
		}
		members, source, fallback, err := EtcdMembership(names, facts)
		switch {
		case err != nil:
			problems = append(problems, err)
		case len(members) > 0:
			known := cinv.ClusterFacts{EtcdMembers: members}
			if fallback {
				fmt.Fprintf(d.o.Out, "note: etcd's own membership was not readable on any control plane (%s); the inventory is checked against %s instead\n",
					etcdDBErrors(names, facts), source)
				known.EtcdManifest = node.ManifestsDir + "/etcd.yaml (" + source + ")"
			} else {
				known.EtcdSource = source
			}
			if err := cinv.CrossCheck(inv, known); err != nil {
				problems = append(problems, err)
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("the inventory does not match the cluster (%w):\n  %w", ErrRefused, errors.Join(problems...))
	}
	return nil
}

func (d *Driver) upload(ctx context.Context, n cinv.Node) error {
	t, err := d.conn(ctx, n)
	if err != nil {
		return err
	}
	sum, err := d.binarySum()
	if err != nil {
		return err
	}
	dst := d.binary(n)
	// The same kubecpr already there (a resumed run, a second run, a plan
	// before the run): nothing to copy.
	// One session: the directories the run uses (the binary's, and the
	// incoming one for the workers' bundle or token), and the sum of the
	// copy already there, if any.
	incoming := filepath.Dir(hostPath(n, BundleNodePath))
	script := fmt.Sprintf("mkdir -p -m 0700 %s %s && { sha256sum %s 2>/dev/null || true; }",
		transport.ShellQuote(filepath.Dir(dst)), transport.ShellQuote(incoming), transport.ShellQuote(dst))
	var out bytes.Buffer
	if err := t.Run(ctx, []string{"sh", "-c", script}, &out, io.Discard); err != nil {
		return fmt.Errorf("creating %s and %s: %w", filepath.Dir(dst), incoming, err)
	}
	if strings.HasPrefix(out.String(), sum+" ") {
		fmt.Fprintf(d.o.Out, "[%s] kubecpr already at %s (sha256 %.12s…): not copied\n", n.Name, dst, sum)
		return nil
	}
	f, err := os.Open(d.o.Binary)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := t.Upload(ctx, f, dst, 0o755); err != nil {
		return fmt.Errorf("copying kubecpr to %s: %w", dst, err)
	}
	return nil
}

// binarySum is the sha256 of this kubecpr (computed once).
func (d *Driver) binarySum() (string, error) {
	d.sumOnce.Do(func() {
		f, err := os.Open(d.o.Binary)
		if err != nil {
			d.sumErr = err
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			d.sumErr = fmt.Errorf("reading %s: %w", d.o.Binary, err)
			return
		}
		d.sum = hex.EncodeToString(h.Sum(nil))
	})
	return d.sum, d.sumErr
}

// step runs fn on nodes (parallel bound p) as journaled cluster actions
// PHASE/NODE; nodes whose action is done are skipped.
func (d *Driver) step(ctx context.Context, phase string, nodes []cinv.Node, p int, fn func(context.Context, cinv.Node) error) error {
	if len(nodes) == 0 {
		return nil
	}
	fmt.Fprintf(d.o.Out, "== %s: %s\n", phase, names(nodes))
	res := transport.FanOut(ctx, wrap(nodes), p, func(ctx context.Context, n namedNode) error {
		id := phase + "/" + n.Node.Name
		r := &result{node: n.Node.Name, role: string(n.Role), phase: phase}
		d.mu.Lock()
		d.results[id] = r
		d.mu.Unlock()
		if d.done(id) {
			r.state = "done earlier"
			return nil
		}
		if err := d.append(journal.Record{Kind: journal.KindIntent, Stage: phase, Action: id}); err != nil {
			return err
		}
		start := time.Now()
		err := fn(ctx, n.Node)
		r.took = time.Since(start)
		if err != nil {
			r.state = "FAILED"
			_ = d.append(journal.Record{Kind: journal.KindFailed, Stage: phase, Action: id, Data: map[string]string{"error": err.Error()}})
			return err
		}
		r.state = "ok"
		return d.append(journal.Record{Kind: journal.KindDone, Stage: phase, Action: id})
	})
	if err := transport.JoinErrors(res); err != nil {
		return fmt.Errorf("phase %s: %w\nthe cluster journal records which node finished what: `kubecpr cluster status`, then `kubecpr cluster resume` or `kubecpr cluster rollback`", phase, err)
	}
	return nil
}

func names(nodes []cinv.Node) string {
	var s []string
	for _, n := range nodes {
		s = append(s, n.Name)
	}
	return strings.Join(s, ", ")
}

func (d *Driver) runArgs(n cinv.Node, extra ...string) []string {
	args := append([]string{"run", "--cluster-run=" + d.runID}, extra...)
	args = append(args, d.o.RunArgs...)
	return append(args, n.Args...)
}

// CANodePath is where a node gets a CA certificate re-issued for the
// cluster (--renew-ca): "ca-NAME.crt" in this directory.
const CANodePath = "/var/lib/kubecpr/incoming"

// caArgs copies the run's re-issued CA certificates to node n (a worker
// gets the cluster CA's only) and returns the --ca-certificate flags that
// install them.
func (d *Driver) caArgs(ctx context.Context, n cinv.Node, worker bool) ([]string, error) {
	if len(d.o.CACerts) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(d.o.CACerts))
	for name := range d.o.CACerts {
		if !worker || name == "ca" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	t, err := d.conn(ctx, n)
	if err != nil {
		return nil, err
	}
	var args []string
	for _, name := range names {
		dst := hostPath(n, CANodePath+"/ca-"+name+".crt")
		if err := d.incomingDir(ctx, t, n, dst); err != nil {
			return nil, err
		}
		if err := t.Upload(ctx, bytes.NewReader(d.o.CACerts[name]), dst, 0o644); err != nil {
			return nil, fmt.Errorf("copying the re-issued %s CA certificate to %s: %w", name, dst, err)
		}
		args = append(args, "--ca-certificate="+dst)
	}
	return args, nil
}

// preconditionExit is kubecpr's exit code for a run refused before any
// change.
const preconditionExit = 7

// offline is phase 1 on one control plane: its files, every process left
// alone.
func (d *Driver) offline(ctx context.Context, n cinv.Node) error {
	ca, err := d.caArgs(ctx, n, false)
	if err != nil {
		return err
	}
	_, err = d.kubecpr(ctx, n, false, d.runArgs(n, append([]string{"--until", "kubeconfigs"}, ca...)...)...)
	return err
}

// Run drives the whole cluster run (or continues it).
func (d *Driver) Run(ctx context.Context, continued bool) error {
	if err := d.Prepare(ctx); err != nil {
		return err
	}
	if err := d.open(continued); err != nil {
		return err
	}
	inv := d.o.Inventory
	cps, workers := inv.ControlPlanes(), inv.Workers()

	// Phase 1: every control plane offline, before any process is touched.
	var refusedMu sync.Mutex
	refused := 0
	if err := d.step(ctx, PhaseOffline, cps, d.o.Parallel, func(ctx context.Context, n cinv.Node) error {
		err := d.offline(ctx, n)
		var ee *transport.ExitError
		if errors.As(err, &ee) && ee.Code == preconditionExit {
			refusedMu.Lock()
			refused++
			refusedMu.Unlock()
		}
		return err
	}); err != nil {
		if refused == len(cps) && !continued {
			// Every node refused before any change: nothing to resume or
			// roll back. The run is closed, so that the next one starts
			// afresh with what the refusals asked for.
			if aerr := d.append(journal.Record{Kind: journal.KindRunEnd, Data: map[string]string{"status": "refused"}}); aerr != nil {
				return aerr
			}
			return fmt.Errorf("%w: every control plane refused the run before any change (their messages are above); nothing was changed, and the cluster run is closed: run it again with what they ask for", ErrRefused)
		}
		return err
	}
	// Phase 2: all control planes at once, so that a majority of etcd
	// members comes back together (one member alone has no quorum).
	if err := d.step(ctx, PhaseRestart, cps, len(cps), func(ctx context.Context, n cinv.Node) error {
		_, err := d.kubecpr(ctx, n, false, d.runArgs(n, "--from", "bounce")...)
		return err
	}); err != nil {
		return err
	}
	// Phase 3: workers.
	if err := d.workers(ctx, workers); err != nil {
		return err
	}
	if err := d.step(ctx, PhaseVerify, inv.Nodes, d.o.Parallel, d.verify); err != nil {
		return err
	}
	if err := d.refreshClusterInfo(ctx); err != nil {
		return err
	}
	if err := d.append(journal.Record{Kind: journal.KindRunEnd, Data: map[string]string{"status": "complete"}}); err != nil {
		return err
	}
	return nil
}

// worker recovers one worker's kubelet credential and restarts its kubelet.
func (d *Driver) worker(ctx context.Context, n cinv.Node) error {
	if d.o.CA == nil || d.o.CA.Key == nil {
		return errors.New("no cluster CA key to sign the workers' kubelet certificates: run kubecpr cluster on a control-plane node (or give --ca-from a root: control-plane node of the inventory)")
	}
	bundle, _, err := pki.KubeletClientBundle(d.o.CA, n.Name, pki.RenewOptions{Now: d.o.Now, Validity: d.o.Validity})
	if err != nil {
		return err
	}
	t, err := d.conn(ctx, n)
	if err != nil {
		return err
	}
	dst := hostPath(n, BundleNodePath)
	if err := d.incomingDir(ctx, t, n, dst); err != nil {
		return err
	}
	if err := t.Upload(ctx, bytes.NewReader(bundle), dst, 0o600); err != nil {
		return fmt.Errorf("copying the kubelet bundle to %s: %w", dst, err)
	}
	ca, err := d.caArgs(ctx, n, true)
	if err != nil {
		return err
	}
	_, runErr := d.kubecpr(ctx, n, false, d.runArgs(n, append([]string{"--until", "bounce", "--kubelet-client-bundle", dst}, ca...)...)...)
	// The bundle holds a private key: it does not outlive the run.
	if err := t.Run(ctx, []string{"rm", "-f", dst}, io.Discard, io.Discard); err != nil && runErr == nil {
		return fmt.Errorf("removing %s: %w", dst, err)
	}
	if runErr != nil {
		return runErr
	}
	return d.closeWorkerRun(ctx, n)
}

// closeWorkerRun ends a worker's node run with its verify stage (a worker
// has no API server of its own for the csr stage: the driver signed its
// certificate): the run is complete, so that the next cluster run, a year
// on, starts a new one there instead of finding this one open.
func (d *Driver) closeWorkerRun(ctx context.Context, n cinv.Node) error {
	_, err := d.kubecpr(ctx, n, false, d.runArgs(n, "--from", "verify")...)
	return err
}

// verify proves each node: no credential expired (`kubecpr check`), and
// its kubelet authenticates against the API server with its credential.
func (d *Driver) verify(ctx context.Context, n cinv.Node) error {
	if err := d.checkNode(ctx, n); err != nil {
		d.setRow(n, func(r *verifyRow) { r.check = "FAILED" })
		return err
	}
	d.setRow(n, func(r *verifyRow) { r.check = "nothing expired" })
	if !d.live(n) {
		d.setRow(n, func(r *verifyRow) { r.kubelet = "copy: checked offline" })
		fmt.Fprintf(d.o.Out, "[%s] a copy of a node (root: without --kubelet-restart-command or --cri-socket): the kubelet's credential is checked offline only\n", n.Name)
		return nil
	}
	out, err := d.kubecpr(ctx, n, true, "kubelet-auth")
	if err != nil {
		d.setRow(n, func(r *verifyRow) { r.kubelet = "FAILED" })
		return fmt.Errorf("the kubelet's credential: %w", err)
	}
	user := strings.TrimSpace(out)
	d.setRow(n, func(r *verifyRow) { r.kubelet = user })
	if user != "system:node:"+n.Name {
		return fmt.Errorf("the kubelet authenticates as %q, want system:node:%s", user, n.Name)
	}
	fmt.Fprintf(d.o.Out, "[%s] kubelet authenticates as %s\n", n.Name, user)
	if n.Role == cinv.ControlPlane {
		return d.verifyControlPlane(ctx, n)
	}
	return nil
}

// checkNode runs `kubecpr check -o json` on the node: every credential
// must be valid, except users' kubeconfigs when the run was not asked to
// refresh them (the node run noted those).
func (d *Driver) checkNode(ctx context.Context, n cinv.Node) error {
	out, err := d.kubecpr(ctx, n, true, "check", "-o", "json")
	var ee *transport.ExitError
	if err != nil && !(errors.As(err, &ee) && (ee.Code == 1 || ee.Code == 2)) {
		return fmt.Errorf("kubecpr check: %w", err)
	}
	var rep struct {
		Certificates []struct {
			Name, Kind, Status string
		} `json:"certificates"`
		CAs []struct {
			Name, Status string
		} `json:"certificateAuthorities"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return fmt.Errorf("kubecpr check -o json: %v", err)
	}
	users := false
	for _, a := range d.o.RunArgs {
		users = users || strings.HasPrefix(a, "--update-user-kubeconfigs") && !strings.HasSuffix(a, "=false")
	}
	var bad []string
	for _, c := range rep.Certificates {
		if c.Status == "ok" || c.Kind == "user-kubeconfig" && !users {
			continue
		}
		bad = append(bad, c.Name+" "+c.Status)
	}
	for _, c := range rep.CAs {
		if c.Status != "ok" && c.Status != "missing" {
			bad = append(bad, "CA "+c.Name+" "+c.Status)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("after the run, not valid: %s (`kubecpr check` on the node shows them)", strings.Join(bad, ", "))
	}
	return nil
}

// live reports whether a node's processes are acted on: a node over SSH,
// or a root: tree given a way to restart its kubelet or reach its runtime.
func (d *Driver) live(n cinv.Node) bool {
	if n.SSH != nil && n.Root == "" {
		return true
	}
	for _, a := range append(append([]string{}, d.o.RunArgs...), n.Args...) {
		if strings.HasPrefix(a, "--kubelet-restart-command") || strings.HasPrefix(a, "--cri-socket") {
			return true
		}
	}
	return false
}

// Rollback undoes every node the run touched: workers first, then the
// control planes all at once (their etcd members need each other), each
// with its own journal (`kubecpr rollback` on the node).
func (d *Driver) Rollback(ctx context.Context) error {
	if err := d.open(true); err != nil {
		return err
	}
	inv := d.o.Inventory
	var errs []error
	// While the API still answers on the run's certificates.
	if err := d.restoreClusterInfo(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, group := range []struct {
		phase string
		nodes []cinv.Node
		p     int
	}{{"rollback-workers", inv.Workers(), d.o.Parallel}, {"rollback-control-planes", inv.ControlPlanes(), len(inv.ControlPlanes())}} {
		var touched []cinv.Node
		for _, n := range group.nodes {
			if d.touched(n.Name) {
				touched = append(touched, n)
			}
		}
		err := d.step(ctx, group.phase, touched, group.p, func(ctx context.Context, n cinv.Node) error {
			// Only the node's run of this cluster run: a node that refused
			// it kept its last run, which is not this one's to undo.
			args := append(append([]string{"rollback", "--cluster-run=" + d.runID}, d.o.LiveArgs...), n.Args...)
			_, err := d.kubecpr(ctx, n, false, args...)
			return err
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return d.append(journal.Record{Kind: journal.KindRunEnd, Data: map[string]string{"status": "rolled-back"}})
}

// Summary prints one line per node and phase: the table at the end.
func (d *Driver) Summary(w io.Writer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var rs []*result
	for _, r := range d.results {
		rs = append(rs, r)
	}
	order := map[string]int{PhaseOffline: 0, PhaseRestart: 1, PhaseWorkers: 2, PhaseVerify: 3}
	sort.Slice(rs, func(i, j int) bool {
		if order[rs[i].phase] != order[rs[j].phase] {
			return order[rs[i].phase] < order[rs[j].phase]
		}
		return rs[i].node < rs[j].node
	})
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tPHASE\tRESULT\tTIME")
	for _, r := range rs {
		took := "-"
		if r.took > 0 {
			took = r.took.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.node, r.role, r.phase, r.state, took)
	}
	tw.Flush()
	d.VerifyTable(w)
}

// NodeStates summarises a cluster journal: action → state.
func NodeStates(recs []journal.Record) (order []string, state map[string]string) {
	state = map[string]string{}
	for _, r := range recs {
		if r.Action == "" {
			continue
		}
		if _, seen := state[r.Action]; !seen {
			order = append(order, r.Action)
		}
		switch r.Kind {
		case journal.KindIntent:
			state[r.Action] = "in flight"
		case journal.KindDone:
			state[r.Action] = "done"
		case journal.KindFailed:
			state[r.Action] = "failed: " + r.Data["error"]
		}
	}
	return order, state
}

func etcdDBErrors(cps []string, facts map[string]*Facts) string {
	var out []string
	for _, n := range cps {
		if f := facts[n]; f != nil && f.EtcdDBError != "" {
			out = append(out, n+": "+f.EtcdDBError)
		}
	}
	if len(out) == 0 {
		return "no member data"
	}
	return strings.Join(out, "; ")
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/cluster"
	cinv "github.com/kubecpr/kubecpr/recovery/cluster/inventory"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

func clusterFlags() []cli.Flag {
	return append(append([]cli.Flag{
		&cli.StringFlag{Name: "inventory", Aliases: []string{"i"}, Usage: "the cluster's nodes: kubecpr's inventory YAML or a kubespray/Ansible YAML inventory (docs/cluster.md)"},
		&cli.StringFlag{Name: "workers", Value: "bundle", Usage: "how workers get their kubelet credential: bundle (signed here, installed journaled on the worker) or bootstrap (a short-lived bootstrap token, bootstrap-kubelet.conf written on the worker, kubelet restarted, its CSR approved here after checking it names an inventory worker)"},
		&cli.IntFlag{Name: "parallel", Value: 10, Usage: "nodes worked on at once (control planes restart all at once regardless: etcd needs a majority)"},
		&cli.StringFlag{Name: "ca-from", Usage: "node of the inventory (root: nodes) whose cluster CA signs the workers' kubelet certificates (default: this node, --root)"},
	}, renewFlags()...), liveFlags()...)
}

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "recover every node of a cluster from one place: control planes with their etcd quorum, then workers",
		Description: "Phases: offline (every control plane: backup, certs with its own names, kubeconfigs), restart\n" +
			"(every control plane at once: etcd regains quorum, then API servers, controller-managers, schedulers),\n" +
			"workers (kubelet credential signed here, installed journaled, kubelet restarted), verify (nothing\n" +
			"expired, every kubelet authenticates). Nodes over SSH (host keys checked) or local trees (root:).\n" +
			"A cluster journal here records which node finished which phase; each node keeps its own.",
		Subcommands: []*cli.Command{
			{Name: "plan", Usage: "check the inventory against the nodes and print what run would do, changing nothing", Flags: clusterFlags(),
				Action: func(c *cli.Context) error { return clusterRun(c, true) }},
			{Name: "run", Usage: "recover the cluster (continues an unfinished cluster run)", Flags: clusterFlags(),
				Action: func(c *cli.Context) error { return clusterRun(c, false) }},
			{Name: "resume", Usage: "continue the last cluster run with its own options", Flags: liveFlags(),
				Action: func(c *cli.Context) error { return clusterRun(c, false) }},
			{Name: "status", Usage: "which node finished which phase in the last cluster run", Action: clusterStatus},
			{Name: "rollback", Usage: "undo the last cluster run on every node it touched: workers first, control planes last", Flags: liveFlags(),
				Action: clusterRollback},
		},
	}
}

func clusterStateDir(c *cli.Context) (string, *env, error) {
	e, err := setupLight(c)
	if err != nil {
		return "", nil, err
	}
	return e.stateDir(c), e, nil
}

// setupLight is setup without discovering the driving node: a workstation
// driving a cluster has no kubeadm tree of its own.
func setupLight(c *cli.Context) (*env, error) {
	format, err := outputFormat(c)
	if err != nil {
		return nil, err
	}
	if err := checkGlobals(c); err != nil {
		return nil, err
	}
	e := &env{out: c.App.Writer, data: c.App.Writer, warn: c.Duration("warn"), format: format}
	if e.machine() {
		e.out = c.App.ErrWriter
	}
	if e.now, err = parseNow(c.String("now")); err != nil {
		return nil, err
	}
	if e.node, err = node.New(c.String("root")); err != nil {
		return nil, withCode(ExitFailed, err)
	}
	if err := e.resolveState(c); err != nil {
		return nil, err
	}
	return e, nil
}

// setFlagArgs renders the flags the operator set, for the node runs.
func setFlagArgs(c *cli.Context, flags []cli.Flag) []string {
	var out []string
	for _, f := range flags {
		n := f.Names()[0]
		if !c.IsSet(n) {
			continue
		}
		if strings.Contains(n, "daemonset") {
			for _, v := range c.StringSlice(n) {
				out = append(out, "--"+n+"="+v)
			}
			continue
		}
		out = append(out, "--"+n+"="+flagString(c, n))
	}
	return out
}

func clusterRun(c *cli.Context, dryRun bool) error {
	stateDir, e, err := clusterStateDir(c)
	if err != nil {
		return err
	}
	// `cluster plan` changes nothing, not even a lock: it only reads.
	if !dryRun {
		lockDir := filepath.Join(stateDir, "cluster")
		if err := os.MkdirAll(lockDir, 0o700); err != nil {
			return withCode(ExitFailed, err)
		}
		lock, err := journal.Acquire(lockDir, time.Now())
		if err != nil {
			return err
		}
		defer lock.Release()
	}

	o := cluster.Options{StateDir: stateDir, Now: e.now, Out: e.out, Parallel: c.Int("parallel"), Workers: c.String("workers")}
	if o.Binary, err = os.Executable(); err != nil {
		return withCode(ExitFailed, err)
	}
	invPath := c.String("inventory")
	id, recs, err := cluster.CurrentRun(stateDir)
	if err != nil {
		return err
	}
	resuming := c.Command.Name == "resume"
	if id != "" && cluster.Status(recs) == "open" {
		rec, err := cluster.Recorded(recs)
		if err != nil {
			return err
		}
		if invPath != "" && invPath != rec.Inventory || c.IsSet("workers") && c.String("workers") != rec.Workers || c.IsSet("ca-from") && c.String("ca-from") != rec.CAFrom {
			return withCode(ExitPrecondition, fmt.Errorf("cluster run %s is open with inventory %s, --workers %s, --ca-from %q: `kubecpr cluster resume` continues it, `kubecpr cluster rollback` undoes it", id, rec.Inventory, rec.Workers, rec.CAFrom))
		}
		if set := setFlagArgs(c, append(renewFlags(), liveFlags()...)); !resuming && len(set) > 0 && strings.Join(set, " ") != strings.Join(rec.RunArgs, " ") {
			return withCode(ExitPrecondition, fmt.Errorf("cluster run %s is open and was started with %v: an open run continues with its own options (`kubecpr cluster resume`), or `kubecpr cluster rollback` and start again", id, rec.RunArgs))
		}
		invPath, o.GlobalArgs, o.RunArgs, o.LiveArgs, o.Workers, o.CAFrom = rec.Inventory, rec.GlobalArgs, rec.RunArgs, rec.LiveArgs, rec.Workers, rec.CAFrom
		if rec.Parallel > 0 && !c.IsSet("parallel") {
			o.Parallel = rec.Parallel
		}
		if got, _ := fileSHA(rec.Inventory); got != rec.InventorySHA256 {
			return withCode(ExitPrecondition, fmt.Errorf("the inventory %s changed since cluster run %s started: restore it, or roll the run back (`kubecpr cluster rollback`) and start again", rec.Inventory, id))
		}
		fmt.Fprintf(e.out, "continuing cluster run %s\n", id)
	} else {
		if resuming {
			fmt.Fprintln(e.out, "nothing to resume: no unfinished cluster run")
			return nil
		}
		if invPath == "" {
			return withCode(ExitFailed, fmt.Errorf("--inventory FILE is required (docs/cluster.md shows the format; a kubespray inventory works as it is)"))
		}
		o.CAFrom = c.String("ca-from")
		o.RunArgs = setFlagArgs(c, append(renewFlags(), liveFlags()...))
		o.LiveArgs = setFlagArgs(c, liveFlags())
		if c.IsSet("now") {
			o.GlobalArgs = []string{"--now", c.String("now")}
		}
	}
	if o.Inventory, err = cinv.Load(invPath); err != nil {
		return withCode(ExitFailed, err)
	}
	if c.IsSet("validity") || hasArg(o.RunArgs, "--validity=") {
		for _, a := range o.RunArgs {
			if v, ok := strings.CutPrefix(a, "--validity="); ok {
				o.Validity, _ = time.ParseDuration(v)
			}
		}
	}
	if o.CA, err = clusterCA(e, o.Inventory, o.CAFrom); err != nil && len(o.Inventory.Workers()) > 0 && !dryRun && o.Workers != "bootstrap" {
		return withCode(ExitPrecondition, err)
	}
	o.Control = controlTree(e, o.Inventory, o.CAFrom)
	{
		recorded := o.RunArgs
		if o.RunArgs, o.CACerts, err = clusterCAs(e, stateDir, o.Control, o.RunArgs, id != "" && cluster.Status(recs) == "open", dryRun); err != nil {
			return err
		}
		if b := o.CACerts["ca"]; b != nil && o.CA != nil {
			// Workers' kubelet certificates are signed as the new one.
			if crt, err := pki.ParseCertificate(b); err == nil {
				o.CA = &pki.CA{Name: "ca", Cert: crt, Key: o.CA.Key}
			}
		}
		o.RecordedRunArgs = recorded
	}
	d, continued, err := cluster.New(o)
	if err != nil {
		return err
	}
	defer d.Close()
	if dryRun {
		if err := d.Prepare(c.Context); err != nil {
			return withCode(ExitPrecondition, err)
		}
		return printClusterPlan(e, o.Inventory, o.Workers)
	}
	start := time.Now()
	err = d.Run(c.Context, continued)
	fmt.Fprintln(e.out)
	d.Summary(e.out)
	if err != nil {
		if c.Context.Err() != nil {
			return withCode(ExitInterrupted, fmt.Errorf("interrupted: cluster run %s stays open; `kubecpr cluster status` shows where each node is, `kubecpr cluster resume` continues, `kubecpr cluster rollback` undoes it", d.RunID()))
		}
		if errors.Is(err, cluster.ErrRefused) {
			return withCode(ExitPrecondition, err)
		}
		return withCode(ExitStageFailed, err)
	}
	fmt.Fprintf(e.out, "cluster run %s complete in %s\n", d.RunID(), time.Since(start).Round(time.Millisecond))
	if e.machine() {
		st, err := clusterRunStatus(stateDir)
		if err != nil {
			return err
		}
		return emitOrFail(e, st)
	}
	return nil
}

func hasArg(args []string, prefix string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, prefix) {
			return true
		}
	}
	return false
}

func fileSHA(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	return pki.SHA256(b), nil
}

// controlTree is the control-plane tree on this machine: --ca-from's
// root: node, else the driving node (--root) when it has admin.conf.
func controlTree(e *env, inv *cinv.Inventory, from string) *node.Node {
	if from != "" {
		if nd, ok := inv.Find(from); ok && nd.Root != "" {
			if n, err := node.New(nd.Root); err == nil {
				return n
			}
		}
		return nil
	}
	if e.node.Exists(node.KubernetesDir + "/admin.conf") {
		return e.node
	}
	return nil
}

// clusterCA finds the cluster CA (with its key) that signs the workers'
// kubelet certificates: the driving node's, or a root: node's.
func clusterCA(e *env, inv *cinv.Inventory, from string) (*pki.CA, error) {
	n := e.node
	if from != "" {
		nd, ok := inv.Find(from)
		if !ok || nd.Root == "" {
			return nil, fmt.Errorf("--ca-from %s: not a root: node of the inventory %s", from, inv.Source)
		}
		var err error
		if n, err = node.New(nd.Root); err != nil {
			return nil, err
		}
	}
	crt, err := n.ReadFile(node.DefaultPKIDir + "/ca.crt")
	if err != nil {
		return nil, fmt.Errorf("signing the workers' kubelet certificates needs the cluster CA: %w; run kubecpr cluster on a control-plane node, or pass --ca-from NODE", err)
	}
	key, err := n.ReadFile(node.DefaultPKIDir + "/ca.key")
	if err != nil {
		return nil, fmt.Errorf("signing the workers' kubelet certificates needs the cluster CA key: %w; run kubecpr cluster on a control-plane node, or pass --ca-from NODE", err)
	}
	cert, err := pki.ParseCertificate(crt)
	if err != nil {
		return nil, err
	}
	k, err := pki.ParsePrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", node.DefaultPKIDir+"/ca.key", err)
	}
	return &pki.CA{Name: "ca", Cert: cert, Key: k}, nil
}

// ClusterPlan is `kubecpr cluster plan -o json|yaml` (docs/schema.md):
// the phases a cluster run goes through, and on which nodes.
type ClusterPlan struct {
	TypeMeta  `yaml:",inline"`
	Inventory string             `json:"inventory" yaml:"inventory"`
	Workers   string             `json:"workers" yaml:"workers"`
	Phases    []ClusterPlanPhase `json:"phases" yaml:"phases"`
}

// ClusterPlanPhase is one phase of a ClusterPlan.
type ClusterPlanPhase struct {
	Name        string   `json:"name" yaml:"name"`
	Description string   `json:"description" yaml:"description"`
	Nodes       []string `json:"nodes" yaml:"nodes"`
}

// clusterPlan is what a cluster run will do, phase by phase.
func clusterPlan(inv *cinv.Inventory, workers string) ClusterPlan {
	names := func(ns []cinv.Node) []string {
		s := []string{}
		for _, n := range ns {
			s = append(s, n.Name)
		}
		return s
	}
	workersDo := "kubelet client certificate signed here, installed journaled, kubelet restarted"
	if workers == "bootstrap" {
		workersDo = "a bootstrap token (1h, deleted after), bootstrap-kubelet.conf written journaled on each, kubelet restarted, its client CSR approved here only for an inventory worker"
	}
	return ClusterPlan{TypeMeta: typeMeta(kindClusterPlan), Inventory: inv.Source, Workers: workers, Phases: []ClusterPlanPhase{
		{cluster.PhaseOffline, "control planes: diagnose, backup, certs with each node's own names, kubeconfigs", names(inv.ControlPlanes())},
		{cluster.PhaseRestart, "all control planes at once: etcd (quorum), API servers, controller-managers, schedulers; csr; verify", names(inv.ControlPlanes())},
		{cluster.PhaseWorkers, workersDo, names(inv.Workers())},
		{cluster.PhaseVerify, "every node: nothing expired, the kubelet authenticates as system:node:NAME", names(inv.Nodes)},
	}}
}

func printClusterPlan(e *env, inv *cinv.Inventory, workers string) error {
	p := clusterPlan(inv, workers)
	if e.machine() {
		return emitOrFail(e, p)
	}
	w := e.out
	fmt.Fprintf(w, "cluster plan for %s (dry run: nothing will be changed); every node matches the inventory\n", inv.Source)
	for i, ph := range p.Phases {
		nodes := strings.Join(ph.Nodes, ", ")
		if nodes == "" {
			nodes = "(none)"
		}
		fmt.Fprintf(w, "%d. %s (%s): %s\n", i+1, ph.Name, nodes, ph.Description)
	}
	return nil
}

// ClusterRunStatus is `kubecpr cluster status -o json|yaml`, and what
// `cluster run` and `cluster resume` write when they finish
// (docs/schema.md): the cluster journal of the last cluster run.
type ClusterRunStatus struct {
	TypeMeta `yaml:",inline"`
	StateDir string `json:"stateDir" yaml:"stateDir"`
	// RunID is the last cluster run's id, "" when none is recorded.
	RunID     string                `json:"runID" yaml:"runID"`
	Status    string                `json:"status,omitempty" yaml:"status,omitempty"` // open, complete, rolled-back
	Open      bool                  `json:"open" yaml:"open"`
	Journal   string                `json:"journal,omitempty" yaml:"journal,omitempty"`
	Inventory string                `json:"inventory,omitempty" yaml:"inventory,omitempty"`
	Workers   string                `json:"workers,omitempty" yaml:"workers,omitempty"`
	Actions   []ClusterActionStatus `json:"actions" yaml:"actions"`
}

// ClusterActionStatus is one node's phase in a ClusterRunStatus.
type ClusterActionStatus struct {
	Action   string     `json:"action" yaml:"action"` // PHASE/NODE
	Phase    string     `json:"phase" yaml:"phase"`
	Node     string     `json:"node" yaml:"node"`
	State    string     `json:"state" yaml:"state"` // in-flight, done, failed
	Started  time.Time  `json:"started" yaml:"started"`
	Finished *time.Time `json:"finished,omitempty" yaml:"finished,omitempty"`
	Duration string     `json:"duration,omitempty" yaml:"duration,omitempty"`
	Error    string     `json:"error,omitempty" yaml:"error,omitempty"`
}

// clusterRunStatus reads the cluster journal in stateDir into its document.
func clusterRunStatus(stateDir string) (ClusterRunStatus, error) {
	st := ClusterRunStatus{TypeMeta: typeMeta(kindClusterRunStatus), StateDir: stateDir, Actions: []ClusterActionStatus{}}
	id, recs, err := cluster.CurrentRun(stateDir)
	if err != nil || id == "" {
		return st, err
	}
	st.RunID, st.Status = id, cluster.Status(recs)
	st.Open = st.Status == "open"
	st.Journal = filepath.Join(stateDir, "cluster", id, "journal.log")
	if rec, err := cluster.Recorded(recs); err == nil {
		st.Inventory, st.Workers = rec.Inventory, rec.Workers
	}
	// The node journal's reading of records, so that states and times
	// mean the same in both documents.
	for _, a := range summarize(id, st.Open, recs).Actions {
		_, nodeName, _ := strings.Cut(a.Action, "/")
		st.Actions = append(st.Actions, ClusterActionStatus{Action: a.Action, Phase: a.Stage, Node: nodeName, State: a.State,
			Started: a.Started, Finished: a.Finished, Duration: a.Duration, Error: a.Error})
	}
	return st, nil
}

func clusterStatus(c *cli.Context) error {
	stateDir, e, err := clusterStateDir(c)
	if err != nil {
		return err
	}
	if e.machine() {
		st, err := clusterRunStatus(stateDir)
		if err != nil {
			return err
		}
		return emitOrFail(e, st)
	}
	id, recs, err := cluster.CurrentRun(stateDir)
	if err != nil {
		return err
	}
	if id == "" {
		fmt.Fprintln(e.out, "no cluster run recorded in "+filepath.Join(stateDir, "cluster"))
		return nil
	}
	order, state := cluster.NodeStates(recs)
	fmt.Fprintf(e.out, "cluster run %s: %s\n", id, cluster.Status(recs))
	tw := tabwriter.NewWriter(e.out, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "PHASE/NODE\tSTATE")
	for _, a := range order {
		fmt.Fprintf(tw, "%s\t%s\n", a, state[a])
	}
	return tw.Flush()
}

func clusterRollback(c *cli.Context) error {
	stateDir, e, err := clusterStateDir(c)
	if err != nil {
		return err
	}
	lock, err := journal.Acquire(filepath.Join(stateDir, "cluster"), time.Now())
	if err != nil {
		return err
	}
	defer lock.Release()
	id, recs, err := cluster.CurrentRun(stateDir)
	if err != nil {
		return err
	}
	if st := cluster.Status(recs); id == "" || st == "rolled-back" || st == "refused" {
		fmt.Fprintln(e.out, "nothing to roll back: no cluster run, it was rolled back already, or every node refused it before any change")
		return nil
	}
	rec, err := cluster.Recorded(recs)
	if err != nil {
		return err
	}
	inv, err := cinv.Load(rec.Inventory)
	if err != nil {
		return withCode(ExitFailed, err)
	}
	live := rec.LiveArgs
	if set := setFlagArgs(c, liveFlags()); len(set) > 0 {
		live = set
	}
	o := cluster.Options{Inventory: inv, StateDir: stateDir, GlobalArgs: rec.GlobalArgs, RunArgs: rec.RunArgs, LiveArgs: live,
		Workers: rec.Workers, Parallel: rec.Parallel, Now: e.now, Out: e.out}
	// The API, for what the run changed there (cluster-info after
	// --renew-ca), is reached with this machine's control-plane tree.
	o.Control = controlTree(e, inv, rec.CAFrom)
	if o.Binary, err = os.Executable(); err != nil {
		return err
	}
	d := cluster.Existing(o, id)
	defer d.Close()
	fmt.Fprintf(e.out, "rolling back cluster run %s\n", id)
	err = d.Rollback(context.WithoutCancel(c.Context))
	fmt.Fprintln(e.out)
	d.Summary(e.out)
	if err != nil {
		return withCode(ExitStageFailed, fmt.Errorf("cluster rollback incomplete, run it again after fixing: %w", err))
	}
	fmt.Fprintf(e.out, "cluster run %s rolled back on every node it touched\n", id)
	return nil
}

// factsCommand is the node side of `kubecpr cluster`: what this node is.
func factsCommand() *cli.Command {
	return &cli.Command{
		Name:   "facts",
		Usage:  "print what this node is (name, role, cluster CA, etcd members), for kubecpr cluster",
		Hidden: true,
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			inv, err := e.inventory()
			if err != nil {
				return err
			}
			f, err := cluster.ReadFacts(e.node, e.cluster, inv)
			if err != nil {
				return withCode(ExitFailed, err)
			}
			return emit(e.data, "json", f)
		},
	}
}

// kubeletAuthCommand proves the kubelet's credential against the API.
func kubeletAuthCommand() *cli.Command {
	return &cli.Command{
		Name:   "kubelet-auth",
		Usage:  "authenticate with the kubelet's credential and print the user the API server sees",
		Hidden: true,
		Action: func(c *cli.Context) error {
			e, err := setupLight(c)
			if err != nil {
				return err
			}
			user, err := cluster.KubeletIdentity(c.Context, e.node)
			if err != nil {
				return withCode(ExitFailed, err)
			}
			fmt.Fprintln(e.out, user)
			return nil
		},
	}
}

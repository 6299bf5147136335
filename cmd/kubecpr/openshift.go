package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/phases"
	"github.com/kubecpr/kubecpr/phases/openshift"
	"github.com/kubecpr/kubecpr/recovery/distro"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/service"
)

// kubeadmPipelineCommands recover a kubeadm node: refused on OpenShift,
// whose control-plane certificates belong to the cluster operators.
// `resume` is not among them: it continues a run of `kubecpr
// openshift-node` there (resumeOpenShiftNode), and refuses any other.
var kubeadmPipelineCommands = map[string]bool{"run": true, "plan": true, "rehearse": true, "cluster": true}

// refuseOpenShift stops a kubeadm recovery command on an OpenShift node,
// before anything is read further or written.
func refuseOpenShift(c *cli.Context, d distro.Distro) error {
	if d.Kind != distro.OpenShift || c.Command == nil || !kubeadmPipelineCommands[c.Command.Name] {
		return nil
	}
	return withCode(ExitPrecondition, fmt.Errorf("`kubecpr %s` recovers kubeadm nodes and changed nothing: on this OpenShift 4 node "+
		"run `kubecpr openshift-node` for the kubelet and its CSRs (see the note above for the rest)", c.Command.Name))
}

// openshiftCSRDefaultWait is how long openshift-node waits for the
// kubelet's client and serving CSRs by default: the kubelet files the
// client CSR within seconds of starting, the serving one once it has its
// client certificate.
const openshiftCSRDefaultWait = 5 * time.Minute

func openshiftNodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "openshift-node",
		Usage: "OpenShift 4: recover this node's kubelet (new client certificate through the bootstrap kubeconfig) and approve its CSRs",
		Description: "The node part of OpenShift's recovery from expired certificates (docs/openshift.md). Stages:\n" +
			"  openshift-kubelet  an expired or missing kubelet client certificate: restart the kubelet, which bootstraps again\n" +
			"                     through /etc/kubernetes/kubeconfig; an unusable one is set aside first (journaled)\n" +
			"  openshift-csr      approve the node-bootstrapper's client CSR and the node's kubelet-serving CSR with the careful\n" +
			"                     approver, through the localhost-recovery kubeconfig (or --kubeconfig); never signs\n" +
			"The control-plane certificates are the operators' (they recover by themselves since 4.2): kubecpr does not\n" +
			"touch them. Backed up and journaled like `run`: `kubecpr status` shows the run, `kubecpr resume` continues it\n" +
			"with its own options, `kubecpr rollback` restores the files and restarts the kubelet on them.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and change nothing"},
			&cli.BoolFlag{Name: "new-run", Usage: "start a new run even if the last one is unfinished"},
			&cli.StringFlag{Name: "kubeconfig", Usage: "approve CSRs through this kubeconfig (host path; default: the node's localhost-recovery kubeconfig)"},
			&cli.StringFlag{Name: "approve-node", Usage: "approve only this node's CSRs (default: this node)"},
			&cli.BoolFlag{Name: "all-nodes", Usage: "approve the CSRs of every node the cluster knows (the seed's step for workers)"},
			&cli.DurationFlag{Name: "csr-wait", Value: openshiftCSRDefaultWait, Usage: "wait up to this long for this node's client and serving CSRs (0: one pass)"},
			&cli.StringFlag{Name: "kubelet-restart-command", Usage: "shell command that restarts the kubelet where systemd is not PID 1 (default: systemctl restart kubelet)"},
		},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			// By its absolute path: the journal keeps it for a resume run
			// from another directory.
			if kc := c.String("kubeconfig"); kc != "" {
				if abs, err := filepath.Abs(kc); err == nil {
					_ = c.Set("kubeconfig", abs)
				}
			}
			recorded, err := adoptOpenRun(c, e, c.Bool("new-run"))
			if err != nil {
				return err
			}
			return runOpenShiftNode(c, e, openshiftNodeOptions(c, recorded), c.Bool("dry-run"), c.Bool("new-run"))
		},
	}
}

// openshiftNodeSelection is the selection a run of `kubecpr openshift-node`
// records in its run-start record: resume knows the run by it.
const openshiftNodeSelection = "openshift-node"

// openshiftNodeRun holds what a run of openshift-node does: the stages'
// options and how the kubelet is restarted.
type openshiftNodeRun struct {
	stages         openshift.Options
	restartCommand string
}

// openshiftNodeOptions reads a run's options: the command's own flags
// (already given the run's recorded values by continueOpenRun when not set
// anew), else the recorded value (resume has no --kubeconfig flag).
func openshiftNodeOptions(c *cli.Context, recorded map[string]string) openshiftNodeRun {
	val := func(n string) string {
		if definesFlag(c, n) {
			return flagString(c, n)
		}
		return recorded[n]
	}
	wait := openshiftCSRDefaultWait
	if w, err := time.ParseDuration(val("csr-wait")); err == nil {
		wait = w
	}
	all, _ := strconv.ParseBool(val("all-nodes"))
	return openshiftNodeRun{stages: openshift.Options{Kubeconfig: val("kubeconfig"), ApproveNode: val("approve-node"), AllNodes: all, Wait: wait},
		restartCommand: val("kubelet-restart-command")}
}

// record is what the run-start record keeps of o, and the node's name:
// resume, and openshift-node continuing the run, reuse them.
func (o openshiftNodeRun) record(c *cli.Context, cl *node.Cluster) map[string]string {
	out := map[string]string{"kubeconfig": o.stages.Kubeconfig, "approve-node": o.stages.ApproveNode, "all-nodes": strconv.FormatBool(o.stages.AllNodes),
		"csr-wait": o.stages.Wait.String(), "kubelet-restart-command": o.restartCommand}
	if c.IsSet("now") {
		out["now"] = c.String("now")
	}
	if cl != nil && cl.NodeName != "" {
		out["node"] = cl.NodeName
	}
	return out
}

// isOpenShiftNodeRun reports whether a journal is a run of `kubecpr
// openshift-node`: by its recorded selection, or (runs journaled before
// it was recorded) by its stages.
func isOpenShiftNodeRun(recs []journal.Record) bool {
	for _, r := range recs {
		if r.Kind == journal.KindRunStart && r.Start != nil && r.Start.Selection == openshiftNodeSelection || strings.HasPrefix(r.Stage, "openshift-") {
			return true
		}
	}
	return false
}

// resumeOpenShiftNode is `kubecpr resume` on a node whose open run is a
// run of `kubecpr openshift-node`: it continues that run with its recorded
// options. On an OpenShift node whose open run is anything else it refuses,
// naming what to do. handled is false when the generic resume applies.
func resumeOpenShiftNode(c *cli.Context, e *env, id string, recs []journal.Record) (handled bool, err error) {
	if !isOpenShiftNodeRun(recs) {
		if inv, err := e.inventory(); err == nil && inv.OpenShift {
			return true, withCode(ExitPrecondition, fmt.Errorf("run %s on this OpenShift 4 node is not a run of `kubecpr openshift-node`, and `kubecpr resume` "+
				"continues no other here: `kubecpr status` shows it, `kubecpr rollback` undoes it, `kubecpr openshift-node` recovers the node", id))
		}
		return false, nil
	}
	recorded, err := adoptOpenRun(c, e, false)
	if err != nil {
		return true, err
	}
	return true, runOpenShiftNode(c, e, openshiftNodeOptions(c, recorded), false, false)
}

// adoptOpenRun makes the command continue the node's open run, if any,
// with its recorded options, and returns them. The node's name comes from
// the run too when the node no longer says it: the run may have set the
// kubelet's client certificate aside, and the certificate was where the
// name was read from.
func adoptOpenRun(c *cli.Context, e *env, newRun bool) (map[string]string, error) {
	id, open, recs, err := pipeline.CurrentRun(e.stateDir(c))
	if err != nil || !open {
		return nil, err
	}
	if _, _, err := continueOpenRun(c, e, newRun); err != nil {
		return nil, err
	}
	recorded, _, _, err := pipeline.RecordedOptions(recs)
	if err != nil {
		return nil, err
	}
	if e.cluster != nil && e.cluster.NodeName == "" && recorded["node"] != "" {
		e.cluster.NodeName = recorded["node"]
		fmt.Fprintf(e.out, "node %s, as run %s recorded it\n", e.cluster.NodeName, id)
	}
	return recorded, nil
}

func runOpenShiftNode(c *cli.Context, e *env, o openshiftNodeRun, dryRun, newRun bool) error {
	inv, err := e.inventory()
	if err != nil {
		return err
	}
	if !inv.OpenShift {
		return withCode(ExitPrecondition, fmt.Errorf("%s is not an OpenShift 4 node (no %s, no %s together with %s): "+
			"kubecpr openshift-node changed nothing; `kubecpr run` recovers kubeadm nodes", e.node.Root,
			distro.StaticPodResources, distro.OpenShiftBootstrapKubeconfig, distro.OpenShiftKubeletKubeconfig))
	}
	stages := append([]pipeline.Stage{phases.Backup}, openshift.Stages(o.stages)...)
	r := &pipeline.Runner{Node: e.node, Cluster: e.cluster, Opts: pipeline.Options{DryRun: dryRun}, Clock: e.now, Warn: e.warn,
		Out: e.out, StateDir: e.stateDir(c), Stages: stages,
		Selection: openshiftNodeSelection, Recorded: o.record(c, e.cluster), UpdatedOptions: e.updatedOptions}
	// A copy of a node under --root is never live, unless the operator
	// says how to restart its kubelet.
	if e.node.Root == "/" || o.restartCommand != "" {
		var svc service.Manager
		switch {
		case o.restartCommand != "":
			svc = service.Command{Line: o.restartCommand}
		case service.Available():
			svc = service.Systemd{}
		default:
			return withCode(ExitPrecondition, errors.New("systemd is not running on this host, so the kubelet cannot be restarted with systemctl: "+
				"pass --kubelet-restart-command CMD"))
		}
		r.LiveNode = &pipeline.Live{Services: svc}
	}
	if dryRun {
		if _, err := r.Prepare(newRun); err != nil {
			return err
		}
		planned, err := r.Plan(c.Context, stages)
		if err != nil {
			return withCode(ExitPrecondition, err)
		}
		printPlan(e.out, planned, e)
		return nil
	}
	lock, err := journal.Acquire(r.StateDir, time.Now())
	if err != nil {
		return err
	}
	defer func() { _ = lock.Release() }()
	defer func() { _ = r.Close() }()
	if _, err := r.Prepare(newRun); err != nil {
		return err
	}
	planned, err := r.Plan(c.Context, stages)
	if err != nil {
		return withCode(ExitPrecondition, err)
	}
	if err := r.Preflight(planned); err != nil {
		return err
	}
	continued, err := r.Open(newRun)
	if err != nil {
		return err
	}
	if continued {
		fmt.Fprintf(e.out, "continuing unfinished run %s (journal %s)\n", r.RunID(), r.JournalPath())
	} else {
		fmt.Fprintf(e.out, "run %s on %s (OpenShift node part), clock %s (journal %s)\n", r.RunID(), e.node.Root,
			e.now.UTC().Format(time.RFC3339), r.JournalPath())
	}
	start := time.Now()
	if err := r.Apply(c.Context, planned, "openshift-node"); err != nil {
		if c.Context.Err() != nil {
			return withCode(ExitInterrupted, fmt.Errorf("interrupted: run %s stays open, every change so far is journaled (%s); "+
				"`kubecpr status` shows where it stopped, `kubecpr resume` continues it with its own options, `kubecpr rollback` undoes it", r.RunID(), r.JournalPath()))
		}
		return err
	}
	if err := r.Complete(); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "run %s complete in %s; backup in %s\n", r.RunID(), time.Since(start).Round(time.Millisecond), r.Data().BackupDir())
	return nil
}

// openshiftDiscovered accepts what node discovery found on an OpenShift
// node, which has no kubeadm PKI directory: the node name (from the
// kubelet's client certificate) is all kubecpr needs there.
func openshiftDiscovered(c *cli.Context, d distro.Distro, cl *node.Cluster, ue *node.UnknownError) bool {
	if d.Kind != distro.OpenShift || cl == nil || ue == nil {
		return false
	}
	switch c.Command.Name {
	case "resume", "rollback", "status":
		// a recorded run's own node name (resume) or none needed
		return true
	}
	if cl.NodeName == "" {
		fmt.Fprintln(c.App.ErrWriter, "kubecpr: warning: this node's name is unknown (no readable /var/lib/kubelet/pki/kubelet-client-current.pem): "+
			"checks that need it are skipped; `kubecpr openshift-node` needs --approve-node NAME")
	}
	return true
}

package main

import (
	"errors"
	"fmt"
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
var kubeadmPipelineCommands = map[string]bool{"run": true, "plan": true, "resume": true, "rehearse": true, "cluster": true}

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
			"touch them. Backed up and journaled like `run`: `kubecpr rollback` restores the files.",
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
			return runOpenShiftNode(c, e)
		},
	}
}

func runOpenShiftNode(c *cli.Context, e *env) error {
	inv, err := e.inventory()
	if err != nil {
		return err
	}
	if !inv.OpenShift {
		return withCode(ExitPrecondition, fmt.Errorf("%s is not an OpenShift 4 node (no %s, no %s together with %s): "+
			"kubecpr openshift-node changed nothing; `kubecpr run` recovers kubeadm nodes", e.node.Root,
			distro.StaticPodResources, distro.OpenShiftBootstrapKubeconfig, distro.OpenShiftKubeletKubeconfig))
	}
	stages := append([]pipeline.Stage{phases.Backup}, openshift.Stages(openshift.Options{
		Kubeconfig: c.String("kubeconfig"), ApproveNode: c.String("approve-node"), AllNodes: c.Bool("all-nodes"),
		Wait: c.Duration("csr-wait")})...)
	dryRun := c.Bool("dry-run")
	r := &pipeline.Runner{Node: e.node, Cluster: e.cluster, Opts: pipeline.Options{DryRun: dryRun}, Clock: e.now, Warn: e.warn,
		Out: e.out, StateDir: e.stateDir(c), Stages: stages}
	// A copy of a node under --root is never live, unless the operator
	// says how to restart its kubelet.
	if e.node.Root == "/" || c.String("kubelet-restart-command") != "" {
		var svc service.Manager
		switch {
		case c.String("kubelet-restart-command") != "":
			svc = service.Command{Line: c.String("kubelet-restart-command")}
		case service.Available():
			svc = service.Systemd{}
		default:
			return withCode(ExitPrecondition, errors.New("systemd is not running on this host, so the kubelet cannot be restarted with systemctl: "+
				"pass --kubelet-restart-command CMD"))
		}
		r.LiveNode = &pipeline.Live{Services: svc}
	}
	if dryRun {
		if _, err := r.Prepare(c.Bool("new-run")); err != nil {
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
	if _, err := r.Prepare(c.Bool("new-run")); err != nil {
		return err
	}
	planned, err := r.Plan(c.Context, stages)
	if err != nil {
		return withCode(ExitPrecondition, err)
	}
	if err := r.Preflight(planned); err != nil {
		return err
	}
	continued, err := r.Open(c.Bool("new-run"))
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
				"`kubecpr openshift-node` continues it, `kubecpr rollback` undoes it", r.RunID(), r.JournalPath()))
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
	if cl.NodeName == "" {
		fmt.Fprintln(c.App.ErrWriter, "kubecpr: warning: this node's name is unknown (no readable /var/lib/kubelet/pki/kubelet-client-current.pem): "+
			"checks that need it are skipped; `kubecpr openshift-node` needs --approve-node NAME")
	}
	return true
}

package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/phases"
	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/phases/openshift"
	"github.com/kubecpr/kubecpr/recovery/apiserver"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/recovery/service"
)

func renewFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "validity", Value: 365 * 24 * time.Hour, Usage: "lifetime of re-issued certificates (capped at the CA's own expiry); when not given, the kubeadm config's certificateValidityPeriod, else one year"},
		&cli.DurationFlag{Name: "renew-within", Usage: "renew only certificates expiring within this (default 0: every leaf, as kubeadm certs renew all)"},
		&cli.BoolFlag{Name: "rotate-keys", Usage: "make new private keys (same algorithm and size) instead of keeping them"},
		&cli.StringFlag{Name: "csr-dir", Usage: "external CA: write CSRs and keys here; signed <name>.crt files found here are installed"},
		&cli.BoolFlag{Name: "migrate-organizations", Usage: "apply kubeadm 1.29+ organisations: admin.conf O=kubeadm:cluster-admins, super-admin.conf O=system:masters"},
		&cli.BoolFlag{Name: "update-user-kubeconfigs", Usage: "also refresh users' ~/.kube/config files that trust this cluster"},
		&cli.StringFlag{Name: "cluster-run", Hidden: true, Usage: "set by kubecpr cluster: the cluster run this node run belongs to (a step re-run after a crash finds its run complete)"},
		&cli.StringFlag{Name: "apiserver-cert-extra-sans", Usage: "comma-separated IP addresses and DNS names the API server certificate must carry (as kubeadm's flag): it is re-issued with them added, or created with them when missing; the --config certSANs are added too"},
		&cli.StringFlag{Name: "kubelet-client-bundle", Usage: "worker: install this kubelet client certificate+key (PEM, signed on a control-plane node; `kubecpr cluster` makes it) instead of signing one"},
		renewCAFlag(),
		&cli.StringSliceFlag{Name: "ca-certificate", Usage: "install this re-issued CA certificate (same subject and key as one of the node's CAs; `kubecpr cluster run --renew-ca` makes it) over the node's and its older copies; repeatable"},
		&cli.StringFlag{Name: "kubelet-bootstrap-token-file", Usage: "worker: file holding a bootstrap token (id.secret; `kubecpr cluster --workers bootstrap` makes it): write bootstrap-kubelet.conf with it instead of renewing the kubelet's client certificate, so the restarted kubelet requests one"},
	}
}

func liveFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "restart-method", Value: "containerd", Usage: "bounce: containerd (stop the container, the kubelet recreates it) or manifests (move each manifest out and back)"},
		&cli.StringFlag{Name: "cri-socket", Usage: "bounce: containerd socket (default: the kubelet config's containerRuntimeEndpoint, else /run/containerd/containerd.sock); setting it also allows bouncing a node served from --root"},
		&cli.StringFlag{Name: "kubelet-restart-command", Usage: "bounce: shell command that restarts the kubelet where systemd is not PID 1 (default: systemctl restart kubelet)"},
		&cli.DurationFlag{Name: "component-timeout", Value: 5 * time.Minute, Usage: "bounce: how long each component may take to come back healthy"},
		&cli.DurationFlag{Name: "manifest-wait", Value: 20 * time.Second, Usage: "bounce, manifests method: how long to wait for the kubelet to stop a component whose manifest was moved out before stopping its container through the runtime (a kubelet that cannot reach the API server keeps static pods running)"},
		&cli.StringFlag{Name: "apiserver-binary", Usage: "csr: when the node's API server does not answer, run this kube-apiserver binary as a temporary recovery API server on 127.0.0.1"},
		&cli.StringFlag{Name: "etcd-binary", Usage: "csr: when the node's etcd does not answer, run this etcd from its manifest for the duration of the stage"},
		&cli.DurationFlag{Name: "bootstrap-token", Usage: "csr: create a bootstrap token valid this long and write /etc/kubernetes/bootstrap-kubelet.conf for a kubelet that must re-bootstrap"},
		&cli.DurationFlag{Name: "recovery-ttl", Value: 2 * time.Hour, Usage: "csr: lifetime of the recovery server's credentials"},
		&cli.DurationFlag{Name: "csr-wait", Usage: "csr: wait up to this long for the kubelet's client and serving CSRs (default: one pass over what is pending)"},
		&cli.StringFlag{Name: "approve-node", Usage: "csr: approve only this node's CSRs"},
		&cli.StringFlag{Name: "sign", Value: "auto", Usage: "csr: auto (sign with the cluster CA when no controller-manager does within 3s), always, never"},
		&cli.StringSliceFlag{Name: "restart-daemonset", Usage: "bounce: NAMESPACE/NAME of a DaemonSet to roll once the API is back (e.g. kube-system/etcd-defrag); repeatable"},
	}
}

// live decides whether this run may touch processes, and with what; and
// the csr stage's options, which depend on it.
func live(c *cli.Context, e *env) (*pipeline.Live, pipeline.CSROptions, error) {
	sign := csr.SignMode(c.String("sign"))
	switch sign {
	case "", csr.SignAuto, csr.SignAlways, csr.SignNever:
	default:
		return nil, pipeline.CSROptions{}, withCode(ExitFailed, fmt.Errorf("--sign %q: want auto, always or never", sign))
	}
	socket := c.String("cri-socket")
	// A copy of a node under --root is never live, unless the operator
	// says how to reach its processes.
	isLive := e.node.Root == "/" || socket != "" || c.String("kubelet-restart-command") != ""
	if socket == "" && e.cluster != nil && e.cluster.CRISocket != "" {
		socket = e.cluster.CRISocket
	}
	if socket == "" {
		socket = "/run/containerd/containerd.sock"
	}
	csrSocket := ""
	if isLive {
		csrSocket = socket
	}
	csrOpts := pipeline.CSROptions{APIServerBinary: c.String("apiserver-binary"), EtcdBinary: c.String("etcd-binary"), BootstrapToken: c.Duration("bootstrap-token"),
		CRISocket: csrSocket, RecoveryTTL: c.Duration("recovery-ttl"),
		Wait: c.Duration("csr-wait"), ApproveNode: c.String("approve-node"), Sign: string(sign), StateDir: e.stateDir(c)}
	if !isLive {
		return nil, csrOpts, nil // a copy of a node: never touch the host's processes
	}
	method := c.String("restart-method")
	if method != "containerd" && method != "manifests" {
		return nil, csrOpts, withCode(ExitFailed, fmt.Errorf("--restart-method %q: want containerd or manifests", method))
	}
	var svc service.Manager
	switch {
	case c.String("kubelet-restart-command") != "":
		svc = service.Command{Line: c.String("kubelet-restart-command")}
	case service.Available():
		svc = service.Systemd{}
	case !restartsServices(c, e):
		// run --until kubeconfigs (what the refusal below suggests) and
		// rollbacks of runs that restarted nothing need no manager.
		svc = service.Missing{Why: "systemd is not running on this host: pass --kubelet-restart-command CMD"}
	default:
		return nil, csrOpts, withCode(ExitPrecondition, errors.New("systemd is not running on this host, so the kubelet cannot be restarted with systemctl: "+
			"pass --kubelet-restart-command CMD, or renew the files only with `kubecpr run --until kubeconfigs` and restart the kubelet and static pods yourself"))
	}
	var rt runtime.Runtime
	var rtErr error
	connected := false
	lv := &pipeline.Live{
		Runtime: func() (runtime.Runtime, error) {
			if !connected {
				rt, rtErr = runtime.NewContainerd(socket, 10*time.Second)
				connected = true
				if rtErr != nil {
					rtErr = &pipeline.PreconditionError{Stage: "bounce", Err: rtErr}
				}
			}
			return rt, rtErr
		},
		Services: svc, RestartMethod: method, ComponentTimeout: c.Duration("component-timeout"),
		ManifestWait: c.Duration("manifest-wait"), RestartDaemonSets: c.StringSlice("restart-daemonset"),
		Close: func() {
			if connected && rtErr == nil && rt != nil {
				_ = rt.Close()
			}
		},
	}
	return lv, csrOpts, nil
}

func selectionFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "only", Usage: "comma-separated stages to run (backup is added when a stage changes files)"},
		&cli.StringFlag{Name: "from", Usage: "first stage to run"},
		&cli.StringFlag{Name: "until", Usage: "last stage to run"},
	}
}

func options(c *cli.Context) pipeline.Options {
	o := pipeline.Options{
		RenewWithin: c.Duration("renew-within"), RotateKeys: c.Bool("rotate-keys"),
		CSRDir: c.String("csr-dir"), MigrateOrganizations: c.Bool("migrate-organizations"),
		UpdateUserKubeconfigs: c.Bool("update-user-kubeconfigs"), DryRun: c.Bool("dry-run"),
		KubeletClientBundle: c.String("kubelet-client-bundle"), KubeletBootstrapTokenFile: c.String("kubelet-bootstrap-token-file"),
		APIServerCertExtraSANs: splitList(c.String("apiserver-cert-extra-sans")),
		RenewCA:                renewCAOption(c),
		CACertificates:         nonEmpty(c.StringSlice("ca-certificate")),
	}
	// Only an explicit --validity wins over the kubeadm config's
	// certificateValidityPeriod; zero lets the certs stage choose.
	if c.IsSet("validity") {
		o.Validity = c.Duration("validity")
	}
	return o
}

func stageHelp() string {
	var b strings.Builder
	for _, s := range phases.All() {
		fmt.Fprintf(&b, "  %-12s %s\n", s.Name, s.Short)
	}
	return b.String()
}

func planCommand() *cli.Command {
	return &cli.Command{
		Name:        "plan",
		Usage:       "print what `run` would do, changing nothing (same as run --dry-run)",
		Description: "Stages:\n" + stageHelp(),
		Flags:       append(append(renewFlags(), selectionFlags()...), liveFlags()...),
		Action: func(c *cli.Context) error {
			return doRun(c, true)
		},
	}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "back up, renew, rewrite and verify, journaled; continues an unfinished run",
		Description: "Stages, in order:\n" + stageHelp() +
			"\nEvery change is backed up and journaled first. If a run was interrupted, `run` continues it\n" +
			"(use `resume` to continue with the same selection, `rollback` to undo it).",
		Flags: append(append(append(renewFlags(), selectionFlags()...), liveFlags()...),
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and change nothing"},
			&cli.BoolFlag{Name: "new-run", Usage: "start a new run even if the last one is unfinished"},
		),
		Action: func(c *cli.Context) error {
			return doRun(c, c.Bool("dry-run"))
		},
	}
}

func resumeCommand() *cli.Command {
	return &cli.Command{
		Name:  "resume",
		Usage: "continue the last run after a crash or a failure, from the first action not known to be done",
		Flags: append(renewFlags(), liveFlags()...),
		Action: func(c *cli.Context) error {
			return doResume(c)
		},
	}
}

// openRunner sets up a runner with the node lock held.
func openRunner(c *cli.Context, e *env, opts pipeline.Options) (*pipeline.Runner, func(), error) {
	r := &pipeline.Runner{Node: e.node, Cluster: e.cluster, Opts: opts, Clock: e.now, Warn: e.warn,
		Out: e.out, StateDir: e.stateDir(c), Stages: phases.All(), FS: runFS}
	lv, csrOpts, err := live(c, e)
	if err != nil {
		return nil, nil, err
	}
	r.LiveNode, r.Opts.CSR = lv, csrOpts
	lock, err := journal.AcquireOn(runFS, r.StateDir, time2(e))
	if err != nil {
		return nil, nil, err
	}
	if err := lock.AlsoTree(e.node.HostPath(node.KubernetesDir)); err != nil {
		_ = lock.Release()
		return nil, nil, err
	}
	// A recovery API server left by a kubecpr that died is torn down first.
	if pid, port, _, ok := apiserver.Running(r.StateDir); ok {
		fmt.Fprintf(e.out, "tearing down the recovery API server left by an interrupted run (pid %d, port %d)\n", pid, port)
	}
	if err := apiserver.Reap(r.StateDir); err != nil {
		_ = lock.Release()
		return nil, nil, err
	}
	return r, func() {
		_ = r.Close()
		_ = lock.Release()
		if lv != nil && lv.Close != nil {
			lv.Close() // never dials: only a connection made is closed
		}
	}, nil
}

func time2(e *env) time.Time { return time.Now() }

// restartsServices reports whether the command may restart the kubelet:
// run and resume unless the stages chosen end before the bounce; a
// rollback when the run it undoes bounced (its journal says so).
func restartsServices(c *cli.Context, e *env) bool {
	before := map[string]bool{"diagnose": true, "backup": true, "certs": true, "kubeconfigs": true}
	switch c.Command.Name {
	case "run", "rehearse":
		sel := selection(c)
		if len(sel.Only) > 0 {
			for _, s := range sel.Only {
				if !before[s] {
					return true
				}
			}
			return false
		}
		return !before[sel.Until]
	case "rollback":
		_, _, recs, err := pipeline.CurrentRun(e.stateDir(c))
		if err != nil {
			return true
		}
		for _, r := range recs {
			if r.Stage == "bounce" && r.Action != "" && r.Action != "bounce/skipped" {
				return true
			}
		}
		return false
	}
	return true
}

// nonEmpty drops empty values: a repeatable flag recorded as not given
// ("") and replayed on resume.
func nonEmpty(vals []string) []string {
	var out []string
	for _, v := range vals {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func selection(c *cli.Context) pipeline.Selection {
	return pipeline.Selection{Only: splitList(c.String("only")), From: c.String("from"), Until: c.String("until")}
}

func selString(s pipeline.Selection) string {
	switch {
	case len(s.Only) > 0:
		return "only=" + strings.Join(s.Only, ",")
	case s.From != "" || s.Until != "":
		return "from=" + s.From + ";until=" + s.Until
	}
	return "all"
}

func parseSel(s string) pipeline.Selection {
	var sel pipeline.Selection
	if strings.HasPrefix(s, "only=") {
		sel.Only = splitList(strings.TrimPrefix(s, "only="))
		return sel
	}
	for _, part := range strings.Split(s, ";") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "from":
			sel.From = v
		case "until":
			sel.Until = v
		}
	}
	return sel
}

func doRun(c *cli.Context, dryRun bool) error {
	e, err := setup(c)
	if err != nil {
		return err
	}
	return runPipeline(c, e, options(c), selection(c), dryRun, c.Bool("new-run"))
}

func runPipeline(c *cli.Context, e *env, opts pipeline.Options, sel pipeline.Selection, dryRun, newRun bool) error {
	// An open run continues with its own recorded options.
	if _, continuing, err := continueOpenRun(c, e, newRun); err != nil {
		return err
	} else if continuing {
		opts = options(c)
	} else if done, id := clusterStepDone(c, e); done && !dryRun {
		fmt.Fprintf(e.out, "run %s of cluster run %s is complete on this node: nothing to do\n", id, c.String("cluster-run"))
		return nil
	}
	opts.DryRun = dryRun
	if err := saneClockAndValidity(c, e, opts); err != nil {
		return err
	}
	// An unknown layout is not a node to recover: say so before planning.
	if _, err := e.inventory(); err != nil {
		return err
	}
	all := phases.All()
	chosen, err := pipeline.Select(all, sel)
	if err != nil {
		return withCode(ExitFailed, err)
	}
	chosen = pipeline.WithBackup(all, chosen)
	if dryRun {
		r := &pipeline.Runner{Node: e.node, Cluster: e.cluster, Opts: opts, Clock: e.now, Warn: e.warn,
			Out: e.out, StateDir: e.stateDir(c), Stages: all}
		lv, csrOpts, err := live(c, e)
		r.Opts.CSR = csrOpts
		if err == nil && lv != nil {
			lv.Inspect, lv.Runtime = lv.Runtime, nil // a dry run stops nothing: it only lists containers (bounce: who mounts renewed files)
			r.LiveNode = lv
		}
		if _, err := r.Prepare(newRun); err != nil {
			return err
		}
		planned, err := r.Plan(c.Context, chosen)
		if err != nil {
			return err
		}
		return printPlan(e.out, planned, e)
	}
	r, release, err := openRunner(c, e, opts)
	if err != nil {
		return err
	}
	defer release()
	r.Selection, r.Recorded, r.UpdatedOptions = selString(sel), recordOptions(c), e.updatedOptions
	if _, err := r.Prepare(newRun); err != nil {
		return err
	}
	planned, err := r.Plan(c.Context, chosen)
	if err != nil {
		return err
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
		fmt.Fprintf(e.out, "run %s on %s, clock %s (journal %s)\n", r.RunID(), e.node.Root, e.now.UTC().Format(time.RFC3339), r.JournalPath())
	}
	start := time.Now()
	if err := r.Apply(c.Context, planned, selString(sel)); err != nil {
		if c.Context.Err() != nil {
			return withCode(ExitInterrupted, fmt.Errorf("interrupted: run %s stays open, every change so far is journaled (%s). "+
				"`kubecpr status` shows where it stopped, `kubecpr resume` continues it with its own options, `kubecpr rollback` undoes it", r.RunID(), r.JournalPath()))
		}
		return err
	}
	complete := len(chosen) > 0 && chosen[len(chosen)-1].Name == all[len(all)-1].Name
	if complete {
		if err := r.Complete(); err != nil {
			return err
		}
	}
	return printSummary(e, r, all, chosen, complete, continued, time.Since(start))
}

func nextStage(all, chosen []pipeline.Stage) string {
	last := chosen[len(chosen)-1].Name
	for i, s := range all {
		if s.Name == last && i+1 < len(all) {
			return all[i+1].Name
		}
	}
	return last
}

// printPlan writes the plan: text, or a Plan document on e.data.
func printPlan(w io.Writer, planned []pipeline.PlannedStage, e *env) error {
	if e.machine() {
		p := Plan{TypeMeta: typeMeta(kindPlan), Root: e.node.Root, Now: e.now.UTC(), Stages: []PlanStage{}}
		for _, ps := range planned {
			st := PlanStage{Name: ps.Stage.Name, Description: ps.Stage.Short, Note: ps.Note, Actions: []PlanAction{}}
			for _, a := range ps.Actions {
				st.Actions = append(st.Actions, PlanAction{ID: a.ID, Summary: a.Summary, Paths: append([]string{}, a.Paths...)})
			}
			p.Stages = append(p.Stages, st)
		}
		var err error
		if p.Credentials, err = credentials(e); err != nil {
			return err
		}
		return emitOrFail(e, p)
	}
	fmt.Fprintf(w, "plan for %s at %s (dry run: nothing will be changed)\n", e.node.Root, e.now.UTC().Format(time.RFC3339))
	for i, ps := range planned {
		fmt.Fprintf(w, "[%d/%d] %s: %s\n", i+1, len(planned), ps.Stage.Name, ps.Stage.Short)
		if len(ps.Actions) == 0 {
			fmt.Fprintln(w, "      - nothing to do")
		}
		for _, a := range ps.Actions {
			fmt.Fprintf(w, "      • %s\n", a.Summary)
		}
	}
	return nil
}

// printSummary ends a run that applied its stages: the text summary on
// e.out, and with -o json|yaml a RunReport on e.data as well.
func printSummary(e *env, r *pipeline.Runner, all, chosen []pipeline.Stage, complete, continued bool, took time.Duration) error {
	took = took.Round(time.Millisecond)
	if sk := r.Skipped(); len(sk) > 0 {
		fmt.Fprintf(e.out, "not done here (%s is not the live node), left to do on the live node:\n", e.node.Root)
		for _, s := range sk {
			fmt.Fprintf(e.out, "  - %s\n", s)
		}
	}
	rep := RunReport{TypeMeta: typeMeta(kindRunReport), RunID: r.RunID(), Root: e.node.Root, Now: e.now.UTC(), Continued: continued,
		Duration: took.String(), Journal: r.JournalPath(), Backup: r.Data().BackupDir(), Skipped: append([]string{}, r.Skipped()...)}
	if complete {
		rep.Result = "complete"
		what := "complete"
		if len(r.Skipped()) > 0 {
			rep.Result = "finished-on-copy"
			what = "finished on this copy (the skipped stages above are not done)"
		}
		fmt.Fprintf(e.out, "run %s %s in %s; backup in %s\n", r.RunID(), what, took, rep.Backup)
	} else {
		rep.Result, rep.NextStage = "open", nextStage(all, chosen)
		fmt.Fprintf(e.out, "stages done in %s; the run stays open: `kubecpr run --from %s` continues, `kubecpr rollback` undoes it\n",
			took, rep.NextStage)
	}
	if !e.machine() {
		return nil
	}
	st := summarize(r.RunID(), !complete, r.Records())
	rep.Stages, rep.Actions = st.Stages, st.Actions
	var err error
	if rep.Credentials, err = credentials(e); err != nil {
		return err
	}
	return emitOrFail(e, rep)
}

func doResume(c *cli.Context) error {
	e, err := setup(c)
	if err != nil {
		return err
	}
	id, open, recs, err := pipeline.CurrentRun(e.stateDir(c))
	if err != nil {
		return err
	}
	if id == "" || !open {
		fmt.Fprintln(e.out, "nothing to resume: no unfinished run")
		return nil
	}
	// A run of `kubecpr openshift-node` continues as such.
	if handled, err := resumeOpenShiftNode(c, e, id, recs); handled {
		return err
	}
	_, sel, _, err := pipeline.RecordedOptions(recs)
	if err != nil {
		return err
	}
	return runPipeline(c, e, options(c), parseSel(sel), false, false)
}

// adoptLiveOptions gives a rollback the run's own way of reaching the
// node's processes (--kubelet-restart-command, --cri-socket,
// --restart-method, --component-timeout, ...) as the run last journaled
// them, unless given anew: the operator who ran with
// --kubelet-restart-command need not remember it to undo the run.
func adoptLiveOptions(c *cli.Context, e *env) error {
	_, _, recs, err := pipeline.CurrentRun(e.stateDir(c))
	if err != nil || len(recs) == 0 {
		return nil // the rollback itself says what is wrong
	}
	rec, _, _, err := pipeline.RecordedOptions(recs)
	if err != nil {
		return nil
	}
	for _, f := range liveFlags() {
		n := f.Names()[0]
		v, ok := rec[n]
		if !ok || c.IsSet(n) || v == "" {
			continue
		}
		vals := []string{v}
		if strings.Contains(n, "daemonset") {
			vals = splitList(v)
		}
		for _, one := range vals {
			if err := c.Set(n, one); err != nil {
				return withCode(ExitJournal, fmt.Errorf("run journal records --%s %q: %v", n, v, err))
			}
		}
	}
	return nil
}

func rollbackCommand() *cli.Command {
	return &cli.Command{
		Name:  "rollback",
		Usage: "undo every change of the last run, restoring files byte for byte from its backup",
		Flags: append(liveFlags(), &cli.StringFlag{Name: "cluster-run", Hidden: true,
			Usage: "set by kubecpr cluster rollback: roll back only a run of this cluster run (a node that refused it keeps its last run)"}),
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			if err := adoptLiveOptions(c, e); err != nil {
				return err
			}
			// The lock first: the run's state is read under it.
			r, release, err := openRunner(c, e, pipeline.Options{})
			if err != nil {
				return err
			}
			defer release()
			id, _, recs, err := pipeline.CurrentRun(e.stateDir(c))
			if err != nil {
				return err
			}
			if st := pipeline.RunStatus(recs); id == "" || st == "rolled-back" || st == "restored" {
				fmt.Fprintln(e.out, "nothing to roll back: the last run was already rolled back or restored (`kubecpr backup restore RUN-ID` restores any backup)")
				return nil
			}
			if want := c.String("cluster-run"); want != "" {
				rec, _, _, _ := pipeline.RecordedOptions(recs)
				if rec["cluster-run"] != want {
					fmt.Fprintf(e.out, "nothing to roll back for cluster run %s: this node's last run %s is not one of its runs (it refused that cluster run, or never got to it); `kubecpr rollback` without --cluster-run undoes it\n", want, id)
					return nil
				}
			}
			if err := r.OpenRun(id); err != nil {
				return err
			}
			// A run of `kubecpr openshift-node` too: its stages restart the
			// kubelet again on the restored files.
			r.Stages = append(r.Stages, openshift.Stages(openshift.Options{})...)
			fmt.Fprintf(e.out, "rolling back run %s\n", r.RunID())
			if err := r.Rollback(c.Context); err != nil {
				return withCode(ExitStageFailed, fmt.Errorf("rollback incomplete, run it again after fixing: %w", err))
			}
			return nil
		},
	}
}

var errNoRun = errors.New("no run recorded")

// saneClockAndValidity refuses certificates that would be born expired or
// unusable: a validity that is negative or shorter than the recovery
// itself, and on the live node a --now away from the real clock (the new
// certificates would not be valid yet, or already expired, for every
// process that checks them with the real clock).
func saneClockAndValidity(c *cli.Context, e *env, o pipeline.Options) error {
	if o.Validity != 0 && o.Validity < time.Hour {
		return withCode(ExitFailed, fmt.Errorf("--validity %s: certificates must live at least an hour (they would expire before the cluster is back); the default is one year", o.Validity))
	}
	if o.RenewWithin < 0 {
		return withCode(ExitFailed, fmt.Errorf("--renew-within %s: must not be negative", o.RenewWithin))
	}
	skew := e.now.Sub(time.Now())
	if skew < 0 {
		skew = -skew
	}
	if skew > 10*time.Minute {
		if e.node.Root == "/" {
			return withCode(ExitPrecondition, fmt.Errorf("--now %s is %s away from this host's clock (%s): on the live node certificates must be valid by the real clock. "+
				"Fix the clock if it is wrong (timedatectl, chronyc), or rehearse on a copy of the node with --root", e.now.UTC().Format(time.RFC3339), skew.Round(time.Minute), time.Now().UTC().Format(time.RFC3339)))
		}
		fmt.Fprintf(c.App.ErrWriter, "kubecpr: note: the clock is set to %s (%s from the real one): certificates issued here are valid from then, as a rehearsal of that day\n",
			e.now.UTC().Format(time.RFC3339), skew.Round(time.Minute))
	}
	return nil
}

// clusterStepDone reports whether the node's last run belongs to the
// cluster run named by --cluster-run and is complete: a cluster step
// re-run after the driver died finds its work done instead of starting a
// new run on top (whose rollback would not reach the original files).
func clusterStepDone(c *cli.Context, e *env) (bool, string) {
	want := c.String("cluster-run")
	if want == "" {
		return false, ""
	}
	id, open, recs, err := pipeline.CurrentRun(e.stateDir(c))
	if err != nil || id == "" || open || pipeline.RunStatus(recs) != "complete" {
		return false, ""
	}
	rec, _, _, err := pipeline.RecordedOptions(recs)
	return err == nil && rec["cluster-run"] == want, id
}

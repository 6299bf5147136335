package main

import (
	"errors"
	"fmt"
	"github.com/kubecpr/kubecpr/recovery/etcddata"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/distro"
	"github.com/kubecpr/kubecpr/recovery/fsys"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
)

// version is set by the Makefile (-ldflags -X main.version=...).
var version = "dev"

func newApp() *cli.App {
	app := &cli.App{
		Name:    "kubecpr",
		Usage:   "bring a Kubernetes control-plane node back when its certificates have expired",
		Version: version,
		Description: "Offline recovery for kubeadm control-plane nodes: diagnose, back up, renew, rewrite\n" +
			"kubeconfigs, and prove the result; every change journaled, resumable and reversible.\n" +
			"Exit codes: 0 ok, 1 expiring, 2 expired/invalid, 3 could not run, 4 locked, 5 journal damaged,\n" +
			"6 stage failed (resume or rollback), 7 refused before any change, 8 external CA: CSRs written.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "root", Value: "/", Usage: "node root: every node path is resolved under it (a copy of a node for rehearsals)", EnvVars: []string{"KUBECPR_ROOT"}},
			&cli.StringFlag{Name: "now", Usage: "the clock every expiry decision uses, RFC 3339 (default: the system clock)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: formatText, Usage: "output format: text, json or yaml (json and yaml on stdout, progress on stderr; docs/schema.md)"},
			&cli.StringFlag{Name: "config", Usage: "kubeadm config file (InitConfiguration/ClusterConfiguration) when the node's files do not say enough"},
			&cli.StringFlag{Name: "state-dir", Value: node.DefaultState, Usage: "node path of kubecpr's journal, lock and backups"},
			&cli.DurationFlag{Name: "warn", Value: 30 * 24 * time.Hour, Usage: "a certificate expiring within this is reported as expiring"},
		},
		Commands: []*cli.Command{
			checkCommand(),
			diagnoseCommand(),
			planCommand(),
			runCommand(),
			resumeCommand(),
			rollbackCommand(),
			statusCommand(),
			backupCommand(),
			rehearseCommand(),
			recoveryServerCommand(),
			clusterCommand(),
			factsCommand(),
			kubeletAuthCommand(),
			openshiftNodeCommand(),
			kubeconfigCommand(),
			timerCommand(),
			completionCommand(),
			manCommand(),
		},
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {}, // main exits, after deferred cleanup
		Writer:               os.Stdout,
		ErrWriter:            os.Stderr,
	}
	refuseStrayArgs(app.Commands)
	return app
}

// env is what every command works on.
type env struct {
	node    *node.Node
	cluster *node.Cluster
	now     time.Time
	warn    time.Duration
	out     io.Writer // text, progress and notes (stderr when format is json or yaml)
	data    io.Writer // the json/yaml document (stdout)
	format  string
	state   string // host path of the state dir (node.StateDir), set by setup
	// updatedOptions are live options given anew to an open run: the
	// runner journals them so that resume reuses them.
	updatedOptions map[string]string
}

func parseNow(s string) (time.Time, error) {
	if s == "" {
		return time.Now(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, withCode(ExitFailed, fmt.Errorf("--now %q: want RFC 3339, like 2026-12-01T03:00:00Z", s))
	}
	// Certificates carry their dates as UTCTime (1950-2049) or
	// GeneralizedTime; no cluster was made before 2000 or will be renewed
	// after 2200: a year outside is a typo, not a rehearsal.
	if t.Year() < 2000 || t.Year() > 2200 {
		return time.Time{}, withCode(ExitFailed, fmt.Errorf("--now %s: the year %d is not a clock any certificate of a cluster was or will be judged by; give a date between 2000 and 2200 (or leave --now out for the system clock)", s, t.Year()))
	}
	return t, nil
}

// checkGlobals refuses values no run can mean, before anything is read:
// a negative --warn, an empty --only.
func checkGlobals(c *cli.Context) error {
	if w := c.Duration("warn"); w < 0 {
		return withCode(ExitFailed, fmt.Errorf("--warn %s: must not be negative (the default is 720h, 30 days)", w))
	}
	if c.IsSet("only") && len(splitList(c.String("only"))) == 0 {
		return withCode(ExitFailed, fmt.Errorf("--only %q names no stage: give a comma-separated list (diagnose, backup, certs, kubeconfigs, bounce, csr, verify) or leave --only out to run them all", c.String("only")))
	}
	return nil
}

func setup(c *cli.Context) (*env, error) {
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
	// k3s and RKE2 rotate their own certificates: say so, change nothing.
	d, err := distro.Detect(e.node)
	if err != nil {
		return nil, withCode(ExitPrecondition, err)
	} else if msg := d.Notice(); msg != "" {
		fmt.Fprintf(c.App.ErrWriter, "kubecpr: note: %s\n", msg)
	}
	if err := refuseOpenShift(c, d); err != nil {
		return nil, err
	}
	cl, err := e.node.DiscoverWith(node.DiscoverOptions{Config: c.String("config"), EtcdKubeadmConfig: etcddata.KubeadmConfig})
	if err != nil {
		var ue *node.UnknownError
		if errors.As(err, &ue) && cl != nil && cl.PKIDir != "" {
			// The node name is unknown: checks that need it are skipped,
			// and the report says so.
			fmt.Fprintf(c.App.ErrWriter, "kubecpr: warning: %v\n", err)
		} else if !openshiftDiscovered(c, d, cl, ue) {
			return nil, withCode(ExitFailed, err)
		}
	}
	if cl != nil && cl.ConfigNote() != "" {
		fmt.Fprintf(c.App.ErrWriter, "kubecpr: note: %s\n", cl.ConfigNote())
	}
	e.cluster = cl
	return e, nil
}

// stateDir is the host path of --state-dir, resolved inside the root with
// every link followed (node.StateDir) and checked by setup.
func (e *env) stateDir(c *cli.Context) string {
	if e.state == "" {
		e.state = e.node.Path(c.String("state-dir"))
	}
	return e.state
}

// resolveState resolves and checks --state-dir before anything reads or
// writes there: refused (exit 7) when it is unusable.
func (e *env) resolveState(c *cli.Context) error {
	s, err := e.node.StateDir(c.String("state-dir"))
	if err != nil {
		return withCode(ExitPrecondition, err)
	}
	e.state = s
	return nil
}

func (e *env) inventory() (*inventory.Inventory, error) {
	inv, err := inventory.Build(e.node, e.cluster, e.now, e.warn)
	if err != nil {
		return nil, withCode(ExitFailed, err)
	}
	return inv, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// runFS is how runs change files: nil, the real disk. Only this
// package's tests set it (the power-loss filesystem); nothing in the
// shipped binary does.
var runFS fsys.FS

// locked runs fn with the environment set up and the node lock held: the
// shape of every command that changes the node outside the pipeline.
func locked(fn func(c *cli.Context, e *env) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		e, err := setup(c)
		if err != nil {
			return err
		}
		lock, err := journal.AcquireOn(runFS, e.stateDir(c), time.Now())
		if err != nil {
			return err
		}
		defer lock.Release()
		if err := lock.AlsoTree(e.node.HostPath(node.KubernetesDir)); err != nil {
			return err
		}
		return fn(c, e)
	}
}

// report writes a check/diagnose report and turns its status into the
// exit code.
func report(e *env, table func(io.Writer) error, v any, code int) error {
	var err error
	if e.machine() {
		err = emit(e.data, e.format, v)
	} else {
		err = table(e.out)
	}
	if err != nil {
		return withCode(ExitFailed, err)
	}
	if code != 0 {
		return &silentExit{code: code}
	}
	return nil
}

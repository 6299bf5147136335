package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/phases/certs"
	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/distro"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/recovery/service"
)

// The units `kubecpr timer install` writes. Their first line is the
// marker: `kubecpr timer remove` deletes a unit only when it carries it.
const (
	timerServiceName   = "kubecpr-check.service"
	timerTimerName     = "kubecpr-check.timer"
	timerMarker        = "# Managed by kubecpr: written by `kubecpr timer install`, deleted by `kubecpr timer remove`; edits are lost at the next install."
	timerWantsDir      = "timers.target.wants"
	defaultUnitDir     = "/etc/systemd/system"
	defaultTextfileDir = "/var/lib/node_exporter/textfile_collector"
	timerDocs          = "https://github.com/kubecpr/kubecpr/blob/main/docs/timer.md"
)

func timerCommand() *cli.Command {
	return &cli.Command{
		Name:  "timer",
		Usage: "install or remove a systemd timer that checks the node's certificates daily (and renews those about to expire)",
		Description: "install writes " + timerServiceName + " and " + timerTimerName + " (under --root): every day\n" +
			"`kubecpr check --textfile DIR` for node_exporter, and with --renew-within D also `kubecpr timer renew\n" +
			"--renew-within D`, which runs the whole recovery (backup, renew, bounce, verify) only when something\n" +
			"expires within D. remove deletes only units kubecpr wrote. See docs/timer.md.",
		Subcommands: []*cli.Command{timerInstallCommand(), timerRemoveCommand(), timerRenewCommand()},
	}
}

func unitDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "unit-dir", Value: defaultUnitDir, Usage: "node path of the systemd unit directory"}
}

func timerInstallCommand() *cli.Command {
	return &cli.Command{
		Name:  "install",
		Usage: "write (or replace) kubecpr's systemd service and timer",
		Flags: []cli.Flag{
			unitDirFlag(),
			&cli.DurationFlag{Name: "renew-within", Usage: "also renew and restart when a certificate expires within this (e.g. 720h); default 0: check only"},
			&cli.StringFlag{Name: "schedule", Value: "daily", Usage: "the timer's OnCalendar= (systemd.time(7): daily, weekly, *-*-* 03:00, ...)"},
			&cli.StringFlag{Name: "textfile-dir", Value: defaultTextfileDir, Usage: "node path of node_exporter's textfile collector directory (created if missing)"},
			&cli.BoolFlag{Name: "update-user-kubeconfigs", Usage: "the renewal also refreshes users' ~/.kube/config files that trust this cluster (needs --renew-within)"},
			&cli.StringFlag{Name: "binary", Usage: "path of kubecpr on the node, as the units run it (default: this executable)"},
			&cli.BoolFlag{Name: "enable", Usage: "also enable the timer: on the live node systemctl daemon-reload and enable --now; under --root the timers.target.wants link, so it starts at the next boot"},
		},
		Action: func(c *cli.Context) error {
			n, err := timerNode(c)
			if err != nil {
				return err
			}
			u, err := timerUnitsFrom(c)
			if err != nil {
				return err
			}
			return installTimer(c.Context, n, u, c.Bool("enable"), c.App.Writer, c.App.ErrWriter, hostSystemd{})
		},
	}
}

func timerRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:  "remove",
		Usage: "delete the service and timer kubecpr wrote (never a unit without its marker)",
		Flags: []cli.Flag{unitDirFlag()},
		Action: func(c *cli.Context) error {
			n, err := timerNode(c)
			if err != nil {
				return err
			}
			return removeTimer(c.Context, n, c.String("unit-dir"), c.App.Writer, hostSystemd{})
		},
	}
}

func timerRenewCommand() *cli.Command {
	return &cli.Command{
		Name:  "renew",
		Usage: "run the recovery only when a certificate expires within --renew-within (the timer's renewal step)",
		Description: "Renews nothing, and starts no run, backup or restart, when every certificate outlives the window:\n" +
			"a daily timer must not restart the control plane every day. When something is due it runs what\n" +
			"`kubecpr run --renew-within D` runs. It refuses to continue an unfinished run on its own, and refuses\n" +
			"when renewal cannot help (a CA that itself expires within the window).",
		Flags: append(renewFlags(), liveFlags()...),
		Action: func(c *cli.Context) error {
			return renewDue(c)
		},
	}
}

// timerNode is the node the units are written into. k3s and RKE2 are
// refused (their certificates are theirs); any other layout gets the
// units, with a note when it is not kubeadm.
func timerNode(c *cli.Context) (*node.Node, error) {
	n, err := node.New(c.String("root"))
	if err != nil {
		return nil, withCode(ExitFailed, err)
	}
	d, err := distro.Detect(n)
	if err != nil {
		return nil, withCode(ExitPrecondition, err)
	}
	if msg := d.Notice(); msg != "" {
		fmt.Fprintf(c.App.ErrWriter, "kubecpr: note: %s\n", msg)
	}
	if d.Kind == distro.Unknown {
		fmt.Fprintf(c.App.ErrWriter, "kubecpr: note: %s does not look like a kubeadm node yet: the timer's check fails until it does\n", n.Root)
	}
	return n, nil
}

// timerUnits is what the two units say.
type timerUnits struct {
	Dir         string        // node path of the unit directory
	Binary      string        // kubecpr's path on the node
	Globals     []string      // global flags the units pass on (--config, --state-dir, --warn)
	TextfileDir string        // node path
	RenewWithin time.Duration // 0: check only
	Schedule    string        // OnCalendar=
	// UpdateUserKubeconfigs passes --update-user-kubeconfigs to the renewal.
	UpdateUserKubeconfigs bool
}

// passedGlobals are the global flags an install hands on to the units: the
// node's own settings. --root is not one (the units run on the node,
// where it is /), nor --now, nor -o.
var passedGlobals = []string{"config", "state-dir", "warn"}

func timerUnitsFrom(c *cli.Context) (timerUnits, error) {
	u := timerUnits{Dir: c.String("unit-dir"), Binary: c.String("binary"), TextfileDir: c.String("textfile-dir"),
		RenewWithin: c.Duration("renew-within"), Schedule: c.String("schedule"), UpdateUserKubeconfigs: c.Bool("update-user-kubeconfigs")}
	if u.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return u, withCode(ExitFailed, fmt.Errorf("cannot tell where kubecpr is (%v): pass --binary /usr/local/bin/kubecpr", err))
		}
		u.Binary = exe
	}
	for _, g := range passedGlobals {
		if c.IsSet(g) {
			v := c.String(g)
			if g == "warn" {
				v = durationArg(c.Duration(g))
			}
			u.Globals = append(u.Globals, "--"+g, v)
		}
	}
	return u, u.validate()
}

// maxRenewWithin keeps renewal from chasing its own tail: certificates
// renewed for a year (run's default --validity) would be due again at once.
const maxRenewWithin = 365 * 24 * time.Hour

func (u timerUnits) validate() error {
	bad := func(format string, a ...any) error { return withCode(ExitFailed, fmt.Errorf(format, a...)) }
	for flag, p := range map[string]string{"--unit-dir": u.Dir, "--binary": u.Binary, "--textfile-dir": u.TextfileDir} {
		if !path.IsAbs(p) {
			return bad("%s %q: want an absolute path", flag, p)
		}
	}
	for _, s := range append([]string{u.Dir, u.Binary, u.TextfileDir, u.Schedule}, u.Globals...) {
		if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return bad("%q: control characters cannot go into a systemd unit", s)
		}
	}
	if strings.TrimSpace(u.Schedule) == "" {
		return bad("--schedule: want an OnCalendar= expression, like daily")
	}
	if u.RenewWithin < 0 {
		return bad("--renew-within %s: must not be negative", u.RenewWithin)
	}
	if u.UpdateUserKubeconfigs && u.RenewWithin == 0 {
		return bad("--update-user-kubeconfigs: only with --renew-within (the check alone changes nothing)")
	}
	if u.RenewWithin >= maxRenewWithin {
		return bad("--renew-within %s: renewed certificates live a year, so they would be due again at once and the timer would "+
			"restart the control plane on every run; use less than %s (720h is usual)", u.RenewWithin, durationArg(maxRenewWithin))
	}
	return nil
}

// execLine is one ExecStart=: its arguments and whether its failure is
// ignored (systemd's "-" prefix).
type execLine struct {
	IgnoreFailure bool
	Args          []string
}

func (u timerUnits) execLines() []execLine {
	cmd := func(args ...string) []string {
		return append(append([]string{u.Binary}, u.Globals...), args...)
	}
	check := cmd("check", "--textfile", u.TextfileDir)
	if u.RenewWithin == 0 {
		return []execLine{{Args: check}}
	}
	renew := cmd("timer", "renew", "--renew-within", durationArg(u.RenewWithin))
	if u.UpdateUserKubeconfigs {
		renew = append(renew, "--update-user-kubeconfigs")
	}
	return []execLine{
		// The state before: written even when the renewal fails; its
		// status does not decide the unit's, the renewal and the check
		// after it do.
		{IgnoreFailure: true, Args: check},
		{Args: renew},
		{Args: check},
	}
}

func (u timerUnits) service() string {
	what := "check the node's Kubernetes certificates"
	if u.RenewWithin > 0 {
		what += " and renew those expiring within " + durationArg(u.RenewWithin)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n[Unit]\nDescription=kubecpr: %s\nDocumentation=%s\n\n", timerMarker, what, timerDocs)
	b.WriteString("[Service]\nType=oneshot\n")
	b.WriteString("# kubecpr check exits 1 when something expires within --warn: the metrics say so, the unit has not failed.\n")
	b.WriteString("# It exits 2 when something is expired, missing or invalid: the unit fails.\n")
	b.WriteString("SuccessExitStatus=1\n")
	if u.RenewWithin > 0 {
		b.WriteString("# A renewal restarts the kubelet and the control plane and waits for them; an hour is plenty.\n")
		b.WriteString("TimeoutStartSec=1h\n")
	} else {
		b.WriteString("TimeoutStartSec=10min\n")
	}
	for _, l := range u.execLines() {
		b.WriteString("ExecStart=")
		if l.IgnoreFailure {
			b.WriteByte('-')
		}
		for i, a := range l.Args {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(systemdQuote(a))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (u timerUnits) timer() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n[Unit]\nDescription=kubecpr: %s certificate check\nDocumentation=%s\n\n", timerMarker, systemdEscape(u.Schedule), timerDocs)
	fmt.Fprintf(&b, "[Timer]\nOnCalendar=%s\n", systemdEscape(u.Schedule))
	b.WriteString("# Spread a fleet's checks (and renewals, and their restarts) over an hour; catch up after downtime.\n")
	b.WriteString("RandomizedDelaySec=1h\nPersistent=true\nUnit=" + timerServiceName + "\n\n")
	b.WriteString("[Install]\nWantedBy=timers.target\n")
	return b.String()
}

// systemdEscape escapes what systemd expands in unit values: % specifiers
// and $ variables.
func systemdEscape(s string) string {
	return strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
}

// systemdQuote makes one ExecStart= argument (systemd.service(5), "Command
// lines"): specifiers and variables escaped, and double quotes with
// backslash escapes around anything with a space, a quote, a backslash or
// a lone ";" (a command separator in older systemd).
func systemdQuote(a string) string {
	a = systemdEscape(a)
	if a != "" && a != ";" && !strings.ContainsAny(a, " \t\"'\\") {
		return a
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
}

// durationArg formats d the way people write it: 720h, not 720h0m0s.
func durationArg(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	if d%time.Minute == 0 {
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// systemctl is what install and remove ask of the live node's systemd.
type systemctl interface {
	// Running reports whether systemd manages this host.
	Running() bool
	Run(ctx context.Context, args ...string) error
}

type hostSystemd struct{}

func (hostSystemd) Running() bool { return service.Available() }

func (hostSystemd) Run(ctx context.Context, args ...string) error {
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// verifyUnits runs systemd-analyze verify on the units before they are
// installed: a copy in a temporary directory, so a unit that does not
// verify never reaches the node. Hosts without systemd-analyze skip it,
// and the caller says so.
func verifyUnits(ctx context.Context, units map[string]string) (verified bool, err error) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		return false, nil
	}
	dir, err := os.MkdirTemp("", "kubecpr-units-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	var paths []string
	for name, body := range units {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return false, err
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, sa, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil {
		return false, withCode(ExitFailed, fmt.Errorf("systemd-analyze verify refuses the units, nothing was installed: %v\n%s", err,
			strings.TrimSpace(strings.ReplaceAll(string(out), dir+"/", ""))))
	}
	// A bad OnCalendar= is only a warning to verify: ask the calendar.
	if out, err := exec.CommandContext(cctx, sa, "calendar", unitValue(units[timerTimerName], "OnCalendar")).CombinedOutput(); err != nil {
		return false, withCode(ExitFailed, fmt.Errorf("--schedule: systemd-analyze calendar refuses it, nothing was installed: %s", strings.TrimSpace(string(out))))
	}
	return true, nil
}

// unitValue returns the first value of key in a unit's text, unescaped.
func unitValue(unit, key string) string {
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+"="); ok {
			return strings.NewReplacer("%%", "%", "$$", "$").Replace(v)
		}
	}
	return ""
}

// ownUnit reports whether the file at host path p is a unit kubecpr wrote:
// false, nil when there is no file; an error when something else is there.
func ownUnit(p string) (bool, error) {
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !st.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file (%s): not a unit kubecpr wrote, left alone", p, st.Mode().Type())
	}
	data, err := node.ReadRegular(p, p)
	if err != nil {
		return false, err
	}
	first, _, _ := bytes.Cut(data, []byte("\n"))
	if string(first) != timerMarker {
		return false, fmt.Errorf("%s was not written by kubecpr (its first line is not kubecpr's marker): left alone; "+
			"move it aside yourself if kubecpr's should replace it", p)
	}
	return true, nil
}

func installTimer(ctx context.Context, n *node.Node, u timerUnits, enable bool, out, errw io.Writer, sd systemctl) error {
	live := n.Root == "/"
	if !live && !n.Exists(u.Binary) {
		fmt.Fprintf(errw, "kubecpr: note: %s is not on the node under %s: the units run it from there; install kubecpr on the node, or pass --binary with its path there\n", u.Binary, n.Root)
	}
	if live {
		if _, err := os.Stat(u.Binary); err != nil {
			return withCode(ExitFailed, fmt.Errorf("--binary %s: %w", u.Binary, err))
		}
	}
	units := map[string]string{timerServiceName: u.service(), timerTimerName: u.timer()}
	verified, err := verifyUnits(ctx, units)
	if err != nil {
		return err
	}
	if !verified {
		fmt.Fprintln(errw, "kubecpr: note: systemd-analyze is not installed here: the units were not verified")
	}

	dir := n.HostPath(u.Dir)
	// Someone else's unit of the same name is never replaced: check both
	// before writing either.
	for _, name := range []string{timerServiceName, timerTimerName} {
		if _, err := ownUnit(filepath.Join(dir, name)); err != nil {
			return withCode(ExitPrecondition, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return withCode(ExitFailed, err)
	}
	// The service first: a timer never names a service that is not there.
	for _, name := range []string{timerServiceName, timerTimerName} {
		if err := atomicfile.WriteFile(filepath.Join(dir, name), []byte(units[name]), atomicfile.Options{Mode: 0o644, ForceMode: true}); err != nil {
			return withCode(ExitFailed, err)
		}
	}
	fmt.Fprintf(out, "wrote %s and %s in %s", timerServiceName, timerTimerName, u.Dir)
	if !live {
		fmt.Fprintf(out, " under %s", n.Root)
	}
	fmt.Fprintf(out, " (%s):\n", u.Schedule)
	for _, l := range u.execLines() {
		fmt.Fprintf(out, "  %s\n", strings.Join(l.Args, " "))
	}
	tf := n.HostPath(u.TextfileDir)
	if _, err := os.Stat(tf); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(tf, 0o755); err != nil {
			return withCode(ExitFailed, err)
		}
		fmt.Fprintf(out, "created %s: point node_exporter's --collector.textfile.directory at it\n", u.TextfileDir)
	}

	switch {
	case !enable:
		fmt.Fprintf(out, "next: systemctl daemon-reload && systemctl enable --now %s\n", timerTimerName)
	case live && sd.Running():
		for _, args := range [][]string{{"daemon-reload"}, {"enable", "--now", timerTimerName}} {
			if err := sd.Run(ctx, args...); err != nil {
				return withCode(ExitFailed, err)
			}
		}
		fmt.Fprintf(out, "enabled and started %s\n", timerTimerName)
	default:
		// What `systemctl enable` does for WantedBy=timers.target, done
		// on the files: the timer starts at the node's next boot.
		wants := filepath.Join(dir, timerWantsDir)
		if err := os.MkdirAll(wants, 0o755); err != nil {
			return withCode(ExitFailed, err)
		}
		if err := atomicfile.ReplaceSymlink(filepath.Join(wants, timerTimerName), path.Join(u.Dir, timerTimerName)); err != nil {
			return withCode(ExitFailed, err)
		}
		fmt.Fprintf(out, "enabled %s (%s/%s/%s): it starts at the next boot\n", timerTimerName, u.Dir, timerWantsDir, timerTimerName)
	}
	return nil
}

func removeTimer(ctx context.Context, n *node.Node, unitDir string, out io.Writer, sd systemctl) error {
	if !path.IsAbs(unitDir) {
		return withCode(ExitFailed, fmt.Errorf("--unit-dir %q: want an absolute path", unitDir))
	}
	dir := n.HostPath(unitDir)
	var ours []string
	for _, name := range []string{timerTimerName, timerServiceName} {
		own, err := ownUnit(filepath.Join(dir, name))
		if err != nil {
			return withCode(ExitPrecondition, fmt.Errorf("%w; nothing was removed", err))
		}
		if own {
			ours = append(ours, name)
		}
	}
	link := filepath.Join(dir, timerWantsDir, timerTimerName)
	st, linkErr := os.Lstat(link)
	hasLink := linkErr == nil && st.Mode()&fs.ModeSymlink != 0
	if len(ours) == 0 && !hasLink {
		fmt.Fprintf(out, "no kubecpr timer in %s: nothing to remove\n", unitDir)
		return nil
	}
	live := n.Root == "/" && sd.Running()
	if live && len(ours) > 0 {
		if err := sd.Run(ctx, "disable", "--now", timerTimerName); err != nil {
			return withCode(ExitFailed, fmt.Errorf("%w; nothing was removed", err))
		}
	}
	if hasLink {
		if err := atomicfile.Remove(link); err != nil {
			return withCode(ExitFailed, err)
		}
	}
	for _, name := range ours {
		if err := atomicfile.Remove(filepath.Join(dir, name)); err != nil {
			return withCode(ExitFailed, err)
		}
	}
	if live {
		if err := sd.Run(ctx, "daemon-reload"); err != nil {
			return withCode(ExitFailed, err)
		}
	}
	fmt.Fprintf(out, "removed %s from %s\n", strings.Join(ours, " and "), unitDir)
	if !live && n.Root == "/" {
		fmt.Fprintln(out, "next: systemctl daemon-reload")
	}
	return nil
}

// dueReport says what a renewal with window d would do: the credentials it
// would renew and those it cannot help (their CA expires within d, so a
// renewed certificate, which cannot outlive its CA, would be due again the
// next day).
type dueReport struct {
	due, capped []string
	soonest     *inventory.Item
}

// dueForRenewal applies run's own choice (certs.Want, over every credential
// run renews) and keeps only renewals that help: a certificate that would
// be due again at once is not renewed by the timer, or it would restart
// the control plane every day. An expired one is always due: its node is
// down, and a certificate valid until the CA expires brings it back.
func dueForRenewal(inv *inventory.Inventory, now time.Time, o pipeline.Options) dueReport {
	var r dueReport
	for _, it := range inv.Sorted() {
		if it.Cert == nil || (it.Kind == inventory.KindUserKubeconfig && !o.UpdateUserKubeconfigs) {
			continue // run leaves users' kubeconfigs alone unless asked; missing ones are check's
		}
		if r.soonest == nil || it.Cert.NotAfter.Before(r.soonest.Cert.NotAfter) {
			r.soonest = it
		}
		if !certs.Want(it, now, o) {
			continue
		}
		end := now.Add(o.Validity)
		if ca := inv.CA(it.CAName); ca != nil && ca.CA != nil && ca.CA.Cert.NotAfter.Before(end) {
			end = ca.CA.Cert.NotAfter
		}
		expired := pki.StatusAt(it.Cert, now, 0) != pki.StatusOK
		if !expired && end.Sub(now) <= o.RenewWithin {
			r.capped = append(r.capped, fmt.Sprintf("%s (its CA %s expires %s)", it.Name, it.CAName, end.UTC().Format(time.RFC3339)))
			continue
		}
		r.due = append(r.due, it.Name)
	}
	return r
}

func renewDue(c *cli.Context) error {
	e, err := setup(c)
	if err != nil {
		return err
	}
	o := options(c)
	if o.RenewWithin <= 0 {
		return withCode(ExitFailed, errors.New("--renew-within: required, a window like 720h: only certificates expiring within it are renewed"))
	}
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	if id, open, _, err := pipeline.CurrentRun(e.stateDir(c)); err != nil {
		return err
	} else if open {
		return withCode(ExitPrecondition, fmt.Errorf("run %s is unfinished: the timer does not continue a run on its own. "+
			"`kubecpr status` shows where it stopped; `kubecpr resume` continues it, `kubecpr rollback` undoes it", id))
	}
	inv, err := e.inventory()
	if err != nil {
		return err
	}
	r := dueForRenewal(inv, e.now, o)
	if len(r.due) == 0 {
		if len(r.capped) > 0 {
			return withCode(ExitPrecondition, fmt.Errorf("renewing cannot help %s: a certificate cannot outlive its CA, so it would be due "+
				"again at once. Renew the CA (docs/expired-ca.md) or lower --renew-within. kubecpr changed nothing", strings.Join(r.capped, ", ")))
		}
		msg := fmt.Sprintf("nothing expires within %s", durationArg(o.RenewWithin))
		if r.soonest != nil {
			msg += fmt.Sprintf(" (the soonest, %s, on %s)", r.soonest.Name, r.soonest.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(e.out, msg+": no run started")
		return nil
	}
	fmt.Fprintf(e.out, "due within %s: %s\n", durationArg(o.RenewWithin), strings.Join(r.due, ", "))
	if len(r.capped) > 0 {
		fmt.Fprintf(c.App.ErrWriter, "kubecpr: note: renewed only until their CA expires: %s\n", strings.Join(r.capped, ", "))
	}
	return runPipeline(c, e, options(c), pipeline.Selection{}, false, false)
}

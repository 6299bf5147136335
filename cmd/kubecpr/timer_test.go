package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kubecpr/kubecpr/recovery/metrics"
	"github.com/kubecpr/kubecpr/test/fixture"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

const unitDir = "etc/systemd/system" // under a node root

// unitExec is one ExecStart= as systemd reads it.
type unitExec struct {
	ignoreFailure bool
	args          []string
}

// parseUnit reads a unit the way systemd does, for what these tests need:
// the ExecStart= command lines (systemd.service(5) "Command lines": "-"
// prefix, words split on blanks, double quotes with backslash escapes,
// %% and $$ for a literal % and $) and SuccessExitStatus=. It is written
// independently of the code that writes the units.
func parseUnit(t *testing.T, unit string) (execs []unitExec, success map[int]bool) {
	t.Helper()
	success = map[int]bool{0: true}
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "SuccessExitStatus="); ok {
			for _, f := range strings.Fields(v) {
				n, err := strconv.Atoi(f)
				if err != nil {
					t.Fatalf("SuccessExitStatus=%s", v)
				}
				success[n] = true
			}
		}
		v, ok := strings.CutPrefix(line, "ExecStart=")
		if !ok {
			continue
		}
		var e unitExec
		if strings.HasPrefix(v, "-") {
			e.ignoreFailure, v = true, v[1:]
		}
		e.args = splitCommandLine(t, v)
		execs = append(execs, e)
	}
	return execs, success
}

func splitCommandLine(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case quoted && c == '"':
			quoted = false
		case !quoted && c == '"':
			quoted, inWord = true, true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case (c == '%' || c == '$') && i+1 < len(s) && s[i+1] == c:
			i++
			cur.WriteByte(c)
			inWord = true
		case c == '%' || c == '$':
			t.Fatalf("unescaped %c in %q: systemd would expand it", c, s)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func readUnit(t *testing.T, root, name string) string {
	t.Helper()
	p := filepath.Join(root, unitDir, name)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("%s: mode %v, want 0644", name, st.Mode().Perm())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(string(b), "\n"); first != timerMarker {
		t.Errorf("%s: first line %q, want the marker", name, first)
	}
	return string(b)
}

// verifyWithSystemd runs systemd-analyze verify on the installed units.
// Only a host without systemd-analyze skips it, and the test says so.
func verifyWithSystemd(t *testing.T, root string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("systemd-analyze is not installed: the units are NOT verified by systemd on this host")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, "verify",
		filepath.Join(root, unitDir, timerServiceName), filepath.Join(root, unitDir, timerTimerName)).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// runService runs a oneshot service's ExecStart= lines in order as
// systemd does, against the node under root at the tests' clock: a
// failure (an exit status not in SuccessExitStatus=) stops the service
// unless the line is "-" prefixed. It returns each line's result and
// whether the unit succeeded.
func runService(t *testing.T, root, unit string) ([]result, bool) {
	t.Helper()
	execs, success := parseUnit(t, unit)
	bin := kubecprBin(t)
	var rs []result
	for _, e := range execs {
		if e.args[0] != bin {
			t.Fatalf("ExecStart runs %q, want the kubecpr binary %q", e.args[0], bin)
		}
		r := kubecpr(t, nil, append(rootArgs(root), e.args[1:]...)...)
		rs = append(rs, r)
		if !success[r.code] && !e.ignoreFailure {
			return rs, false
		}
	}
	return rs, true
}

func TestTimerInstallVerifiesAndItsServiceRuns(t *testing.T) {
	root := expiredNode(t)
	bin := kubecprBin(t)
	r := kubecpr(t, nil, rootArgs(root, "timer", "install", "--renew-within", "720h", "--update-user-kubeconfigs", "--binary", bin)...)
	if r.code != 0 {
		t.Fatalf("install: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if diff := cmp.Diff([]string{timerServiceName, timerTimerName}, listDir(t, filepath.Join(root, unitDir))); diff != "" {
		t.Errorf("unit dir (-want +got), no temporary file may stay:\n%s", diff)
	}
	svc := readUnit(t, root, timerServiceName)
	tmr := readUnit(t, root, timerTimerName)
	verifyWithSystemd(t, root)
	if !strings.Contains(tmr, "\nOnCalendar=daily\n") || !strings.Contains(tmr, "\nUnit="+timerServiceName+"\n") {
		t.Errorf("timer:\n%s", tmr)
	}

	execs, _ := parseUnit(t, svc)
	var lines []string
	for _, e := range execs {
		l := strings.Join(e.args[1:], " ")
		if e.ignoreFailure {
			l = "-" + l
		}
		lines = append(lines, l)
	}
	want := []string{
		"-check --textfile /var/lib/node_exporter/textfile_collector",
		"timer renew --renew-within 720h --update-user-kubeconfigs",
		"check --textfile /var/lib/node_exporter/textfile_collector",
	}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("ExecStart= lines (-want +got):\n%s", diff)
	}

	// The service's command lines, run: before (expired, ignored), the
	// renewal, after (ok).
	rs, ok := runService(t, root, svc)
	if !ok || len(rs) != 3 {
		t.Fatalf("the service failed: %+v", rs)
	}
	if rs[0].code != ExitExpired {
		t.Errorf("check before renewal: exit %d, want %d\n%s", rs[0].code, ExitExpired, rs[0].stderr)
	}
	if !strings.Contains(rs[1].stdout, "due within 720h") || !strings.Contains(rs[1].stdout, "apiserver") {
		t.Errorf("renewal output:\n%s%s", rs[1].stdout, rs[1].stderr)
	}
	if rs[2].code != 0 {
		t.Errorf("check after renewal: exit %d\n%s%s", rs[2].code, rs[2].stdout, rs[2].stderr)
	}
	prom := filepath.Join(root, "var/lib/node_exporter/textfile_collector", metrics.FileName)
	data, err := os.ReadFile(prom)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("metrics do not parse: %v\n%s", err, data)
	}
	for _, m := range fams[metrics.Expired].GetMetric() {
		if m.GetGauge().GetValue() != 0 {
			t.Errorf("still expired after the renewal: %v", m.GetLabel())
		}
	}
	if st, _ := os.Stat(prom); st.Mode().Perm() != 0o644 {
		t.Errorf("%s: mode %v", prom, st.Mode().Perm())
	}

	// The next day's run renews nothing: no run, no backup, no restart.
	backups := listDir(t, filepath.Join(root, "var/lib/kubecpr/backups"))
	before := snapshot(t, root)
	rs, ok = runService(t, root, svc)
	if !ok {
		t.Fatalf("second run failed: %+v", rs)
	}
	if !strings.Contains(rs[1].stdout, "nothing expires within 720h") || strings.Contains(rs[1].stdout, "journal") {
		t.Errorf("second renewal output:\n%s", rs[1].stdout)
	}
	if diff := cmp.Diff(backups, listDir(t, filepath.Join(root, "var/lib/kubecpr/backups"))); diff != "" {
		t.Errorf("a backup was taken with nothing to renew (-before +after):\n%s", diff)
	}
	after := snapshot(t, root)
	delete(before, "var/lib/node_exporter/textfile_collector/"+metrics.FileName)
	delete(after, "var/lib/node_exporter/textfile_collector/"+metrics.FileName)
	if diff := diffSnapshots(before, after); diff != "" {
		t.Errorf("the node changed with nothing to renew:\n%s", diff)
	}
}

func TestTimerCheckOnly(t *testing.T) {
	bin := kubecprBin(t)
	for _, tc := range []struct {
		name    string
		leafEnd time.Time
		code    int
		unitOK  bool
	}{
		{"valid", now.AddDate(0, 6, 0), 0, true},
		{"expiring is not a failed unit", now.AddDate(0, 0, 10), ExitExpiring, true},
		{"expired fails the unit", now.AddDate(0, 0, -3), ExitExpired, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t, func(o *fixture.Options) { o.Leaf.NotAfter, o.KubeletClient.NotAfter = tc.leafEnd, tc.leafEnd })
			r := kubecpr(t, nil, rootArgs(root, "timer", "install", "--binary", bin, "--schedule", "Mon *-*-* 03:00", "--warn", "240h")...)
			if r.code != 0 {
				t.Fatalf("install: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			svc := readUnit(t, root, timerServiceName)
			if tmr := readUnit(t, root, timerTimerName); !strings.Contains(tmr, "\nOnCalendar=Mon *-*-* 03:00\n") {
				t.Errorf("timer:\n%s", tmr)
			}
			verifyWithSystemd(t, root)
			execs, _ := parseUnit(t, svc)
			if len(execs) != 1 || execs[0].ignoreFailure {
				t.Fatalf("check-only service: %+v", execs)
			}
			if diff := cmp.Diff([]string{"--warn", "240h", "check", "--textfile", defaultTextfileDir}, execs[0].args[1:]); diff != "" {
				t.Errorf("ExecStart (-want +got), --warn handed on:\n%s", diff)
			}
			before := snapshot(t, root)
			rs, ok := runService(t, root, svc)
			if rs[0].code != tc.code || ok != tc.unitOK {
				t.Errorf("exit %d (unit ok %v), want %d (%v)\n%s", rs[0].code, ok, tc.code, tc.unitOK, rs[0].stderr)
			}
			after := snapshot(t, root)
			delete(after, "var/lib/node_exporter/textfile_collector/"+metrics.FileName)
			if diff := diffSnapshots(before, after); diff != "" {
				t.Errorf("a check changed more than its metrics file:\n%s", diff)
			}
		})
	}
}

func TestTimerRemoveDeletesOnlyItsOwn(t *testing.T) {
	root := expiredNode(t)
	bin := kubecprBin(t)
	dir := filepath.Join(root, unitDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "kubelet.service")
	if err := os.WriteFile(other, []byte("[Service]\nExecStart=/usr/bin/kubelet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := kubecpr(t, nil, rootArgs(root, "timer", "install", "--binary", bin, "--enable")...); r.code != 0 {
		t.Fatalf("install: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	link := filepath.Join(dir, timerWantsDir, timerTimerName)
	if target, err := os.Readlink(link); err != nil || target != "/etc/systemd/system/"+timerTimerName {
		t.Fatalf("--enable under --root: link %q, %v", target, err)
	}
	// Installing again replaces kubecpr's own units.
	if r := kubecpr(t, nil, rootArgs(root, "timer", "install", "--binary", bin, "--renew-within", "720h")...); r.code != 0 {
		t.Fatalf("second install: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(readUnit(t, root, timerServiceName), "timer renew") {
		t.Errorf("the second install did not replace the service")
	}
	r := kubecpr(t, nil, rootArgs(root, "timer", "remove")...)
	if r.code != 0 {
		t.Fatalf("remove: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if diff := cmp.Diff([]string{"kubelet.service", timerWantsDir}, listDir(t, dir)); diff != "" {
		t.Errorf("unit dir after remove (-want +got):\n%s", diff)
	}
	if got := listDir(t, filepath.Join(dir, timerWantsDir)); len(got) != 0 {
		t.Errorf("wants dir after remove: %v", got)
	}
	if r := kubecpr(t, nil, rootArgs(root, "timer", "remove")...); r.code != 0 || !strings.Contains(r.stdout, "nothing to remove") {
		t.Errorf("second remove: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A unit of the same name that kubecpr did not write is never
	// replaced nor deleted.
	foreign := filepath.Join(dir, timerServiceName)
	body := "[Service]\nExecStart=/usr/local/bin/someone-elses-check\n"
	if err := os.WriteFile(foreign, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	for _, args := range [][]string{{"timer", "install", "--binary", bin}, {"timer", "remove"}} {
		r := kubecpr(t, nil, rootArgs(root, args...)...)
		if r.code != ExitPrecondition || !strings.Contains(r.stderr, "was not written by kubecpr") {
			t.Errorf("%v over a foreign unit: exit %d, want %d\n%s", args, r.code, ExitPrecondition, r.stderr)
		}
		if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
			t.Errorf("%v changed the node:\n%s", args, diff)
		}
	}
}

func TestTimerInstallRefuses(t *testing.T) {
	bin := kubecprBin(t)
	k3s := t.TempDir()
	for _, d := range []string{"etc/rancher/k3s", "var/lib/rancher/k3s/server/tls"} {
		if err := os.MkdirAll(filepath.Join(k3s, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		root     string
		args     []string
		code     int
		want     string
		needsSA  bool
		nothingW bool
	}{
		{"k3s", k3s, nil, ExitPrecondition, "k3s certificate rotate", false, true},
		{"window of a year", "", []string{"--renew-within", "8760h"}, ExitFailed, "due again at once", false, true},
		{"negative window", "", []string{"--renew-within", "-1h"}, ExitFailed, "must not be negative", false, true},
		{"user kubeconfigs without renewal", "", []string{"--update-user-kubeconfigs"}, ExitFailed, "only with --renew-within", false, true},
		{"relative unit dir", "", []string{"--unit-dir", "etc/systemd/system"}, ExitFailed, "absolute", false, true},
		{"bad schedule", "", []string{"--schedule", "every other tuesday"}, ExitFailed, "schedule", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath("systemd-analyze"); err != nil && tc.needsSA {
				t.Skip("systemd-analyze is not installed: a schedule cannot be checked on this host")
			}
			root := tc.root
			if root == "" {
				root = expiredNode(t)
			}
			before := snapshot(t, root)
			r := kubecpr(t, nil, rootArgs(root, append([]string{"timer", "install", "--binary", bin}, tc.args...)...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q\n%s%s", r.code, tc.code, tc.want, r.stdout, r.stderr)
			}
			if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
				t.Errorf("a refused install changed the node:\n%s", diff)
			}
		})
	}
}

func TestTimerRenewDoesNotChaseItsTail(t *testing.T) {
	// The CA expires in 20 days, the leaves in 10: renewed leaves end with
	// the CA, still inside the window. The first renewal is due (the
	// kubelet's self-signed kubelet.crt has no CA to end with); the next
	// day's must not renew and restart again for nothing.
	root := expiredNode(t, func(o *fixture.Options) {
		o.CA.NotAfter = now.AddDate(0, 0, 20)
		o.Leaf.NotAfter, o.KubeletClient.NotAfter = now.AddDate(0, 0, 10), now.AddDate(0, 0, 10)
	})
	r := kubecpr(t, nil, rootArgs(root, "timer", "renew", "--renew-within", "720h")...)
	if r.code != 0 || !strings.Contains(r.stdout, "due within 720h") || !strings.Contains(r.stderr, "renewed only until their CA expires") {
		t.Fatalf("first renewal: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	before := treeWithState(t, root)
	r = kubecpr(t, nil, rootArgs(root, "timer", "renew", "--renew-within", "720h")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "cannot outlive its CA") || !strings.Contains(r.stderr, "changed nothing") {
		t.Errorf("second renewal: exit %d, want %d\n%s%s", r.code, ExitPrecondition, r.stdout, r.stderr)
	}
	if diff := diffSnapshots(before, treeWithState(t, root)); diff != "" {
		t.Errorf("the node changed:\n%s", diff)
	}
}

func TestTimerRenewLeavesAnOpenRunToAPerson(t *testing.T) {
	root := expiredNode(t)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "certs")...); r.code != 0 {
		t.Fatalf("run --until certs: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	before := treeWithState(t, root)
	r := kubecpr(t, nil, rootArgs(root, "timer", "renew", "--renew-within", "720h")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "unfinished") || !strings.Contains(r.stderr, "kubecpr resume") {
		t.Errorf("exit %d, want %d\n%s%s", r.code, ExitPrecondition, r.stdout, r.stderr)
	}
	if diff := diffSnapshots(before, treeWithState(t, root)); diff != "" {
		t.Errorf("the node or its journal changed:\n%s", diff)
	}
}

// treeWithState snapshots the node including kubecpr's state dir (its
// journal), except the lock file a command takes and releases.
func treeWithState(t *testing.T, root string) map[string]string {
	t.Helper()
	m := treesnap.Take(t, root)
	for k := range m {
		if strings.HasSuffix(k, "/lock") || strings.HasSuffix(k, ".lock") {
			delete(m, k)
		}
	}
	return m
}

func TestSystemdQuoteRoundTrips(t *testing.T) {
	for _, s := range []string{"plain", "with space", `quo"te`, `back\slash`, "100%", "$HOME", "${X}", ";", "", "tab\there", "'single'"} {
		line := systemdQuote("/usr/bin/kubecpr") + " " + systemdQuote(s)
		got := splitCommandLine(t, line)
		if diff := cmp.Diff([]string{"/usr/bin/kubecpr", s}, got); diff != "" && s != "" {
			t.Errorf("%q → %q (-want +got):\n%s", s, line, diff)
		}
	}
}

func TestTimerUnitsCarryTheNodeSettings(t *testing.T) {
	u := timerUnits{Dir: "/etc/systemd/system", Binary: "/opt/kube cpr/kubecpr", TextfileDir: "/var/lib/node_exporter/text 100%",
		Schedule: "daily", RenewWithin: 36 * time.Hour, Globals: []string{"--config", "/etc/kubeadm/$cfg.yaml", "--state-dir", "/srv/kubecpr"}}
	if err := u.validate(); err != nil {
		t.Fatal(err)
	}
	execs, _ := parseUnit(t, u.service())
	var got [][]string
	for _, e := range execs {
		got = append(got, e.args)
	}
	g := []string{"/opt/kube cpr/kubecpr", "--config", "/etc/kubeadm/$cfg.yaml", "--state-dir", "/srv/kubecpr"}
	check := append(append([]string{}, g...), "check", "--textfile", "/var/lib/node_exporter/text 100%")
	want := [][]string{check, append(append([]string{}, g...), "timer", "renew", "--renew-within", "36h"), check}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ExecStart= (-want +got):\n%s", diff)
	}
	for _, bad := range []timerUnits{
		{Dir: "/etc/systemd/system", Binary: "/usr/bin/kubecpr", TextfileDir: "/x", Schedule: "daily\nExecStart=/bin/sh"},
		{Dir: "/etc/systemd/system", Binary: "/usr/bin/kubecpr\n", TextfileDir: "/x", Schedule: "daily"},
		{Dir: "/etc/systemd/system", Binary: "kubecpr", TextfileDir: "/x", Schedule: "daily"},
		{Dir: "/etc/systemd/system", Binary: "/usr/bin/kubecpr", TextfileDir: "/x", Schedule: " "},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

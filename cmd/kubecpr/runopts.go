package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// A run records every option it was started with in its run-start record
// (flag name → value); resume, and run continuing an open run, reuse them,
// so that a resumed run does exactly what the interrupted one would have
// done. An option given again with another value is refused before any
// change: the same run cannot change its mind half-way.

// runOptionNames are the flags a run records: renewal and live options.
// The stage selection is recorded apart (run --from may continue a run
// with other stages) and so is the clock.
func runOptionNames() []string {
	var names []string
	for _, f := range append(renewFlags(), liveFlags()...) {
		names = append(names, f.Names()[0])
	}
	return names
}

// flagString is a flag's value as recorded.
func flagString(c *cli.Context, name string) string {
	switch v := c.Value(name).(type) {
	case time.Duration:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	case string:
		return v
	case cli.StringSlice:
		return strings.Join(v.Value(), ",")
	case *cli.StringSlice:
		return strings.Join(v.Value(), ",")
	case []string:
		return strings.Join(v, ",")
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func definesFlag(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// recordOptions collects the run's options for its run-start record.
func recordOptions(c *cli.Context) map[string]string {
	out := map[string]string{}
	for _, n := range runOptionNames() {
		if definesFlag(c, n) {
			out[n] = flagString(c, n)
		}
	}
	if c.IsSet("now") {
		out["now"] = c.String("now")
	}
	return out
}

// sameValue compares a flag value given now with the recorded one,
// durations by their length ("48h" = "48h0m0s").
func sameValue(a, b string) bool {
	if a == b {
		return true
	}
	da, errA := time.ParseDuration(a)
	db, errB := time.ParseDuration(b)
	return errA == nil && errB == nil && da == db
}

// applyRecorded makes the command work with the open run's options: an
// option not given takes its recorded value; one given with another value
// is refused. It returns the run's recorded clock when --now was recorded.
func applyRecorded(c *cli.Context, runID string, recorded map[string]string) (time.Time, map[string]string, error) {
	var clash []string
	updated := map[string]string{}
	names := make([]string, 0, len(recorded))
	for n := range recorded {
		names = append(names, n)
	}
	sort.Strings(names)
	var clock time.Time
	for _, n := range names {
		want := recorded[n]
		if n == "now" {
			t, err := time.Parse(time.RFC3339, want)
			if err != nil {
				return clock, nil, withCode(ExitJournal, fmt.Errorf("run %s recorded --now %q: %v", runID, want, err))
			}
			if c.IsSet("now") && !t.Equal(mustTime(c.String("now"))) {
				clash = append(clash, fmt.Sprintf("--now %s (the run's clock: %s)", c.String("now"), want))
			}
			clock = t
			continue
		}
		if !definesFlag(c, n) {
			continue
		}
		if c.IsSet(n) {
			if got := flagString(c, n); !sameValue(got, want) {
				if isLiveOption(n) {
					// How to reach the node's processes may change for
					// the stages still to come (run --until kubeconfigs,
					// then run --from csr --apiserver-binary ...): the
					// new value is journaled and resume reuses it.
					updated[n] = got
					continue
				}
				clash = append(clash, fmt.Sprintf("--%s %s (the run's: %q)", n, got, want))
			}
			continue
		}
		if strings.Contains(n, "daemonset") { // a slice: one Set per value
			for _, v := range splitList(want) {
				if err := c.Set(n, v); err != nil {
					return clock, nil, withCode(ExitJournal, fmt.Errorf("run %s recorded --%s %q: %v", runID, n, want, err))
				}
			}
			continue
		}
		if err := c.Set(n, want); err != nil {
			return clock, nil, withCode(ExitJournal, fmt.Errorf("run %s recorded --%s %q: %v", runID, n, want, err))
		}
	}
	if len(clash) > 0 {
		return clock, nil, withCode(ExitPrecondition, fmt.Errorf("run %s is open and was started with other options: %s. "+
			"An open run continues with its own options: `kubecpr resume` (no options needed), or undo it with `kubecpr rollback` and start again with the new ones",
			runID, strings.Join(clash, ", ")))
	}
	return clock, updated, nil
}

// isLiveOption reports whether a flag says how to act on the node's
// processes (bounce, csr) rather than what certificates to issue: those
// may be given anew when an open run continues.
func isLiveOption(name string) bool {
	for _, f := range liveFlags() {
		if f.Names()[0] == name {
			return true
		}
	}
	// openshift-node's own: the API server it approves through, whose CSRs.
	return name == "kubeconfig" || name == "all-nodes"
}

func mustTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339, s)
	return t
}

// continueOpenRun finds the node's open run, if any, and adopts its
// options. newRun on an open run is refused: the first run's changes
// would be orphaned (rollback and status see only the newest run).
func continueOpenRun(c *cli.Context, e *env, newRun bool) (pipeline.Selection, bool, error) {
	id, open, recs, err := pipeline.CurrentRun(e.stateDir(c))
	if err != nil || !open {
		return pipeline.Selection{}, false, err
	}
	if newRun {
		return pipeline.Selection{}, false, withCode(ExitPrecondition, fmt.Errorf("run %s is still open: finish it (`kubecpr resume`) or undo it (`kubecpr rollback`) before starting a new one; "+
			"a new run on top of an open one could not be rolled back to the node's original state", id))
	}
	recorded, sel, _, err := pipeline.RecordedOptions(recs)
	if err != nil {
		return pipeline.Selection{}, false, err
	}
	clock, updated, err := applyRecorded(c, id, recorded)
	if err != nil {
		return pipeline.Selection{}, false, err
	}
	if !clock.IsZero() {
		e.now = clock
	}
	e.updatedOptions = updated
	return parseSel(sel), true, nil
}

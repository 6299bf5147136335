package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// ActionStatus is one action of a run, in RunStatus and RunReport.
type ActionStatus struct {
	Action   string     `json:"action" yaml:"action"`
	Stage    string     `json:"stage" yaml:"stage"`
	State    string     `json:"state" yaml:"state"` // in-flight, done, failed, undoing, undone
	Started  time.Time  `json:"started" yaml:"started"`
	Finished *time.Time `json:"finished,omitempty" yaml:"finished,omitempty"`
	Duration string     `json:"duration,omitempty" yaml:"duration,omitempty"`
	Error    string     `json:"error,omitempty" yaml:"error,omitempty"`
}

// RunStatus is `kubecpr status -o json|yaml` (docs/schema.md).
type RunStatus struct {
	TypeMeta `yaml:",inline"`
	StateDir string `json:"stateDir" yaml:"stateDir"`
	// RunID is the last run's id, "" when none is recorded.
	RunID   string         `json:"runID" yaml:"runID"`
	Status  string         `json:"status,omitempty" yaml:"status,omitempty"` // open, complete, rolled-back, restored
	Open    bool           `json:"open" yaml:"open"`
	Journal string         `json:"journal,omitempty" yaml:"journal,omitempty"`
	Stages  []string       `json:"stagesDone" yaml:"stagesDone"`
	Actions []ActionStatus `json:"actions" yaml:"actions"`
	// Runs lists every run recorded in the state dir, oldest first.
	Runs []RunSummary `json:"runs" yaml:"runs"`
}

// RunSummary is one recorded run in `kubecpr status`.
type RunSummary struct {
	RunID  string `json:"runID" yaml:"runID"`
	Status string `json:"status" yaml:"status"` // open, complete, rolled-back, restored, unreadable
}

// allRuns lists every run directory of the state dir with its status.
func allRuns(stateDir string) []RunSummary {
	ents, _ := os.ReadDir(filepath.Join(stateDir, "runs"))
	out := []RunSummary{}
	for _, d := range ents {
		if !d.IsDir() {
			continue
		}
		st := "unreadable"
		if recs, err := journal.ReadFile(filepath.Join(stateDir, "runs", d.Name(), "journal.log")); err == nil && len(recs) > 0 {
			st = pipeline.RunStatus(recs)
		}
		out = append(out, RunSummary{RunID: d.Name(), Status: st})
	}
	return out
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the last run's journal: which actions are done, in flight or undone, with times",
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			dir := e.stateDir(c)
			id, open, recs, err := pipeline.CurrentRun(dir)
			if err != nil {
				return err
			}
			if id == "" {
				if e.machine() {
					return emit(e.data, e.format, RunStatus{TypeMeta: typeMeta(kindRunStatus), StateDir: dir,
						Stages: []string{}, Actions: []ActionStatus{}, Runs: allRuns(dir)})
				}
				fmt.Fprintln(e.out, "no run recorded in "+dir)
				return nil
			}
			st := summarize(id, open, recs)
			st.StateDir = dir
			st.Journal = filepath.Join(dir, "runs", id, "journal.log")
			st.Runs = allRuns(dir)
			if e.machine() {
				return emit(e.data, e.format, st)
			}
			state := "open (resume or rollback)"
			if !open {
				state = "closed"
			}
			if len(st.Runs) > 1 {
				fmt.Fprintln(e.out, "runs recorded here (oldest first):")
				for _, r := range st.Runs {
					fmt.Fprintf(e.out, "  %s  %s\n", r.RunID, r.Status)
				}
				fmt.Fprintln(e.out)
			}
			fmt.Fprintf(e.out, "run %s: %s\njournal %s\n\n", id, state, st.Journal)
			tw := tabwriter.NewWriter(e.out, 4, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ACTION\tSTATE\tSTARTED\tDURATION\tERROR")
			for _, a := range st.Actions {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Action, a.State, a.Started.UTC().Format(time.RFC3339), a.Duration, a.Error)
			}
			return tw.Flush()
		},
	}
}

func summarize(id string, open bool, recs []journal.Record) RunStatus {
	st := RunStatus{TypeMeta: typeMeta(kindRunStatus), RunID: id, Open: open, Status: pipeline.RunStatus(recs),
		Stages: []string{}, Actions: []ActionStatus{}}
	idx := map[string]int{}
	for _, r := range recs {
		if r.Kind == journal.KindStageEnd && !slices.Contains(st.Stages, r.Stage) {
			st.Stages = append(st.Stages, r.Stage) // once, however often a continued run repeats it
		}
		if r.Action == "" {
			continue
		}
		i, ok := idx[r.Action]
		if !ok {
			st.Actions = append(st.Actions, ActionStatus{Action: r.Action, Stage: r.Stage, Started: r.Time})
			i = len(st.Actions) - 1
			idx[r.Action] = i
		}
		a := &st.Actions[i]
		switch r.Kind {
		case journal.KindIntent:
			a.State = "in-flight"
			a.Error = ""
		case journal.KindDone:
			finished := r.Time
			a.State, a.Finished = "done", &finished
			a.Duration = r.Time.Sub(a.Started).Round(time.Millisecond).String()
		case journal.KindFailed:
			a.State, a.Error = "failed", r.Data["error"]
		case journal.KindUndoIntent:
			a.State = "undoing"
		case journal.KindUndone:
			a.State = "undone"
		}
	}
	sort.SliceStable(st.Actions, func(i, j int) bool { return st.Actions[i].Started.Before(st.Actions[j].Started) })
	return st
}

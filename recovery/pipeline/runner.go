package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/backup/etcdsnap"
	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/crashpoint"
	"github.com/kubecpr/kubecpr/recovery/fsys"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// BackupStage is the name of the stage the runner itself carries out:
// nothing is changed on a node before its backup is complete.
const BackupStage = "backup"

// DefaultBackupSources are always copied before a change.
var DefaultBackupSources = []string{node.KubernetesDir, node.KubeletPKIDir, node.KubeletConfig}

// Runner applies a pipeline to one node with a journal.
type Runner struct {
	Node     *node.Node
	Cluster  *node.Cluster
	Opts     Options
	Clock    time.Time // the run's clock (--now)
	Warn     time.Duration
	Out      io.Writer
	StateDir string // host path of the state dir
	Stages   []Stage
	// LiveNode is nil when processes must not be touched.
	LiveNode *Live
	// plannedCAs are the CA certificates this run's plan re-issues
	// (Data.PlanCA): every later Inventory judges against them.
	plannedCAs map[string]*pki.CA
	// Selection and Recorded go into the run-start record of a new run:
	// the stage selection, and every option of the run (flag name →
	// value), which resume reuses.
	Selection string
	Recorded  map[string]string
	// UpdatedOptions are live options given anew when an open run
	// continues: journaled (an "options" record) on top of the run-start's.
	UpdatedOptions map[string]string
	// FS is how the run changes files (journal, backup, node files); nil is
	// the real disk. Tests give the power-loss filesystem.
	FS fsys.FS

	runID   string
	journal *journal.Journal
	records []journal.Record
	skipped []string
	// the run's backup manifest once loaded (see backup)
	manifest    *backup.Manifest
	manifestDir string
}

// Skipped lists the actions this process journaled as skipped (a stage
// that needs the live node, run on a copy): what is left to do there.
func (r *Runner) Skipped() []string { return r.skipped }

// files writes through the run's filesystem.
func (r *Runner) files() atomicfile.Files { return atomicfile.On(r.FS) }

// data implements Data for stages.
type data struct{ r *Runner }

var _ Data = data{}

func (d data) Node() *node.Node       { return d.r.Node }
func (d data) Cluster() *node.Cluster { return d.r.Cluster }
func (d data) Now() time.Time         { return d.r.Clock }
func (d data) Options() Options       { return d.r.Opts }
func (d data) Out() io.Writer         { return d.r.Out }
func (d data) RunID() string          { return d.r.runID }
func (d data) BackupDir() string      { return d.r.backupDir() }
func (d data) FS() fsys.FS            { return fsys.Or(d.r.FS) }
func (d data) Live() *Live            { return d.r.LiveNode }
func (d data) ApplyFiles(ctx context.Context, stage, actionID string, ops []node.FileOp) error {
	states, _ := d.r.states()
	a := Action{ID: actionID, Files: func(context.Context) ([]node.FileOp, error) { return ops, nil }}
	return d.r.applyFiles(ctx, stage, a, states[actionID])
}
func (d data) Inventory() (*inventory.Inventory, error) {
	inv, err := inventory.Build(d.r.Node, d.r.Cluster, d.r.Clock, d.r.Warn)
	if err != nil {
		return nil, err
	}
	for name, ca := range d.r.plannedCAs {
		inv.UseCA(name, ca)
	}
	return inv, nil
}
func (d data) PlanCA(name string, ca *pki.CA) {
	if d.r.plannedCAs == nil {
		d.r.plannedCAs = map[string]*pki.CA{}
	}
	d.r.plannedCAs[name] = ca
}

// Data returns the stage view of this runner (for plan-only use).
func (r *Runner) Data() Data { return data{r} }

func (r *Runner) backupDir() string { return filepath.Join(r.StateDir, "backups", r.runID) }
func (r *Runner) runDir(id string) string {
	return filepath.Join(r.StateDir, "runs", id)
}
func (r *Runner) currentFile() string { return filepath.Join(r.StateDir, "current") }

// RunID is the id of the run the runner works on ("" before Open).
func (r *Runner) RunID() string { return r.runID }

// JournalPath returns the host path of the open journal.
func (r *Runner) JournalPath() string { return filepath.Join(r.runDir(r.runID), "journal.log") }

// CurrentRun returns the id of the last run recorded in stateDir, and
// whether it is still open (not completed, not rolled back).
func CurrentRun(stateDir string) (id string, open bool, recs []journal.Record, err error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "current"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil, nil
	}
	if err != nil {
		return "", false, nil, err
	}
	id = strings.TrimSpace(string(b))
	jp := filepath.Join(stateDir, "runs", id, "journal.log")
	recs, err = journal.ReadFile(jp)
	if errors.Is(err, fs.ErrNotExist) || err == nil && (len(recs) == 0 || recs[0].Kind != journal.KindRunStart) {
		// "current" is written only after the run-start record is durable:
		// a run without it lost its journal, and what it changed is unknown.
		return id, false, nil, fmt.Errorf("%w: %s names run %s, but its journal %s is missing or lost its records: "+
			"what the run changed is unknown. Compare the node with the run's backup (`kubecpr backup restore %s --dry-run`), "+
			"restore it with what the run created removed (`kubecpr backup restore %s --prune`), which closes the run", journal.ErrCorrupt, filepath.Join(stateDir, "current"), id, jp, id, id)
	}
	if err != nil {
		return id, false, nil, err
	}
	// Every record is this run's: one carrying another run's id (copied
	// in, or a journal of another run under this name) would be trusted
	// for this run — a foreign run-end made rollback say "nothing to roll
	// back". Its checksum is valid; its id is not.
	for i, rec := range recs {
		if rec.RunID != "" && rec.RunID != id {
			return id, false, nil, fmt.Errorf("%w: %s: record %d belongs to run %s, not to run %s: the journal holds another run's records; "+
				"compare the node with the run's backup (`kubecpr backup restore %s --dry-run`) and restore it (`kubecpr backup restore %s --prune`), which closes the run",
				journal.ErrCorrupt, jp, i+1, rec.RunID, id, id, id)
		}
	}
	open = RunStatus(recs) == "open"
	return id, open, recs, nil
}

// RunStatus is "open" (resume or rollback), "complete" (rollback still
// possible) or "rolled-back".
func RunStatus(recs []journal.Record) string {
	status := "open"
	for _, rec := range recs {
		if rec.Kind == journal.KindRunEnd && rec.Data["status"] != "" {
			status = rec.Data["status"]
		}
	}
	return status
}

// OpenRun opens the journal of an existing run by id (rollback of a
// completed run).
func (r *Runner) OpenRun(id string) error {
	r.runID = id
	_, err := r.Open(false)
	return err
}

// Prepare picks the run to work on without writing anything: the open run
// in the state dir, or a new run id. Plans made after it name this run.
func (r *Runner) Prepare(forceNew bool) (continued bool, err error) {
	id, open, _, err := CurrentRun(r.StateDir)
	if err != nil {
		return false, err
	}
	if open && !forceNew {
		r.runID = id
		return true, nil
	}
	r.runID = newRunID(r.Clock)
	return false, nil
}

// Open opens the journal of the prepared run (creating it for a new run).
func (r *Runner) Open(forceNew bool) (continued bool, err error) {
	if r.runID == "" {
		if continued, err = r.Prepare(forceNew); err != nil {
			return false, err
		}
	} else {
		id, open, _, err := CurrentRun(r.StateDir)
		if err != nil {
			return false, err
		}
		continued = open && id == r.runID
	}
	if err := fsys.MkdirAll(r.FS, r.runDir(r.runID), 0o700); err != nil {
		return false, fmt.Errorf("state dir %s: %w", r.StateDir, err)
	}
	j, err := journal.OpenOn(r.FS, r.JournalPath(), time.Now)
	if err != nil {
		return false, err
	}
	r.journal = j
	r.records = j.Records()
	if rep := j.Repaired(); rep != nil && rep.Truncated {
		fmt.Fprintf(r.Out, "journal: a torn last record from a crash was cut off at byte %d (copy kept at %s)\n", rep.Offset, rep.BrokenCopy)
	}
	r.sweepTemps()
	if !continued && len(r.records) == 0 {
		if err := r.appendRunStart(); err != nil {
			return false, err
		}
	}
	if continued && len(r.UpdatedOptions) > 0 {
		if err := r.append(journal.Record{Kind: journal.KindOptions, Options: r.UpdatedOptions}); err != nil {
			return false, err
		}
	}
	if !continued {
		if err := r.files().WriteFile(r.currentFile(), []byte(r.runID+"\n"), atomicfile.Options{Mode: 0o600}); err != nil {
			return false, err
		}
	}
	return continued, nil
}

// Close closes the journal.
func (r *Runner) Close() error {
	if r.journal == nil {
		return nil
	}
	return r.journal.Close()
}

func newRunID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

func (r *Runner) append(rec journal.Record) error { return r.appendRecord(rec, true) }

// appendLazy journals rec without an fsync of its own (see
// journal.AppendLazy): durable with the next record.
func (r *Runner) appendLazy(rec journal.Record) error { return r.appendRecord(rec, false) }

func (r *Runner) appendRecord(rec journal.Record, durable bool) error {
	rec.RunID = r.runID
	appendFn := r.journal.Append
	if !durable {
		appendFn = r.journal.AppendLazy
	}
	out, err := appendFn(rec)
	if err != nil {
		return fmt.Errorf("journal %s: %w", r.JournalPath(), err)
	}
	r.records = append(r.records, out)
	crashpoint.At(crashpoint.Record)
	return nil
}

// actionState summarises the journal for one action.
type actionState struct {
	firstIntent *journal.Record
	lastIntent  *journal.Record
	done        bool
	undone      bool
	doneRec     *journal.Record
}

func (r *Runner) states() (map[string]*actionState, []string) {
	m := map[string]*actionState{}
	var order []string
	for i := range r.records {
		rec := &r.records[i]
		if rec.Action == "" {
			continue
		}
		st := m[rec.Action]
		if st == nil {
			st = &actionState{}
			m[rec.Action] = st
		}
		switch rec.Kind {
		case journal.KindIntent:
			if st.firstIntent == nil || st.undone {
				st.firstIntent = rec
				order = append(order, rec.Action)
				st.undone = false
			}
			st.lastIntent = rec
			st.done = false
		case journal.KindDone:
			st.done = true
			st.doneRec = rec
		case journal.KindUndone:
			st.undone = true
			st.done = false
		}
	}
	return m, order
}

// PlannedStage is a stage with its actions.
type PlannedStage struct {
	Stage   Stage
	Actions []Action
	Note    string
}

// Plan plans every selected stage against the node as it is now. Any
// precondition failure stops here, before a change.
func (r *Runner) Plan(ctx context.Context, stages []Stage) ([]PlannedStage, error) {
	var out []PlannedStage
	var external *ExternalCAError
	for _, s := range stages {
		if s.Name == BackupStage || s.Plan == nil {
			out = append(out, PlannedStage{Stage: s})
			continue
		}
		acts, err := s.Plan(ctx, data{r})
		if err != nil {
			var pe *PreconditionError
			var ee *ExternalCAError
			if errors.As(err, &ee) {
				// Keep planning: every stage's CSRs go out in one round.
				if external == nil {
					external = &ExternalCAError{CSRDir: ee.CSRDir}
				}
				external.CSRs = append(external.CSRs, ee.CSRs...)
				continue
			}
			if errors.As(err, &pe) {
				return nil, err
			}
			return nil, &PreconditionError{Stage: s.Name, Err: err}
		}
		out = append(out, PlannedStage{Stage: s, Actions: acts})
	}
	if external != nil {
		return nil, external
	}
	// The backup covers every path any action may write.
	// Users' kubeconfigs are always included, so a run continued later with
	// more stages finds every file it may touch in the same backup.
	sources := append(append([]string{}, DefaultBackupSources...), r.Node.UserKubeconfigs()...)
	for _, ps := range out {
		for _, a := range ps.Actions {
			for _, p := range a.Paths {
				// The backup walks its sources without following links:
				// a file behind a linked directory is backed up at the
				// node path it resolves to, which is where it is written.
				p = r.Node.Resolve(p, true)
				if !covered(sources, p) {
					sources = append(sources, p)
				}
			}
		}
	}
	for i := range out {
		if out[i].Stage.Name == BackupStage {
			out[i].Actions = []Action{r.backupAction(sources)}
		}
	}
	return out, nil
}

func covered(sources []string, p string) bool {
	for _, s := range sources {
		if p == s || strings.HasPrefix(p, strings.TrimSuffix(s, "/")+"/") {
			return true
		}
	}
	return false
}

// WithBackup makes sure the backup stage runs before a mutating stage.
func WithBackup(all, chosen []Stage) []Stage {
	mutates := false
	for _, s := range chosen {
		if s.Mutates {
			mutates = true
		}
		if s.Name == BackupStage {
			return chosen
		}
	}
	if !mutates {
		return chosen
	}
	for _, s := range all {
		if s.Name == BackupStage {
			return append([]Stage{s}, chosen...)
		}
	}
	return chosen
}

func (r *Runner) backupAction(sources []string) Action {
	return Action{
		ID:      "backup/node",
		Summary: fmt.Sprintf("copy %s into %s (0700) with a sha256 manifest", strings.Join(sources, ", "), r.backupDir()),
		Run: func(ctx context.Context) (map[string]string, error) {
			dir := r.backupDir()
			if _, err := backup.Load(dir); err == nil {
				return map[string]string{"dir": dir, "reused": "true"}, nil
			}
			_ = fsys.Or(r.FS).RemoveAll(dir) // a partial backup from a crash
			m, err := backup.CreateOn(r.FS, r.Node.Root, dir, sources, r.Clock)
			if err != nil {
				return nil, err
			}
			facts := map[string]string{"dir": dir, "entries": strconv.Itoa(len(m.Entries))}
			r.etcdSnapshot(ctx, m, dir, facts)
			return facts, nil
		},
		Applied: func(ctx context.Context, _ map[string]string) bool {
			_, err := backup.Load(r.backupDir())
			return err == nil
		},
	}
}

// etcdSnapshot adds an etcd snapshot to the backup when this is the live
// node and its etcd answers: taken through etcd's own client with a
// client certificate minted in memory from the etcd CA for a few minutes
// (etcd often runs on its own expired certificates), its sha256 recorded
// in the backup manifest. Without etcd, or on a copy, it says so and the
// run goes on: the file backup is what rollback relies on.
func (r *Runner) etcdSnapshot(ctx context.Context, m *backup.Manifest, dir string, facts map[string]string) {
	manifests := node.ManifestsDir
	if r.Cluster != nil && r.Cluster.StaticPodPath != "" {
		manifests = r.Cluster.StaticPodPath
	}
	man, err := r.Node.ReadFile(path.Join(manifests, "etcd.yaml"))
	if err != nil {
		return // no stacked etcd on this node (a worker, external etcd)
	}
	if r.LiveNode == nil {
		fmt.Fprintf(r.Out, "      no etcd snapshot: not the live node (a copy under --root)\n")
		facts["etcd_snapshot"] = "skipped: not live"
		return
	}
	pkiDir := node.DefaultPKIDir
	if r.Cluster != nil && r.Cluster.PKIDir != "" {
		pkiDir = r.Cluster.PKIDir
	}
	eps, err := etcdsnap.EndpointsFromManifest(man)
	caCert, err1 := r.Node.ReadFile(path.Join(pkiDir, "etcd/ca.crt"))
	caKey, err2 := r.Node.ReadFile(path.Join(pkiDir, "etcd/ca.key"))
	if err = errors.Join(err, err1, err2); err != nil {
		fmt.Fprintf(r.Out, "      no etcd snapshot: %v\n", err)
		facts["etcd_snapshot"] = "skipped: " + err.Error()
		return
	}
	res, err := etcdsnap.SaveToBackup(ctx, etcdsnap.Options{Endpoints: eps, MetricsURL: etcdsnap.MetricsFromManifest(man), CACert: caCert, CAKey: caKey, Now: r.Clock}, m, dir)
	switch {
	case errors.Is(err, etcdsnap.ErrEtcdDown):
		fmt.Fprintf(r.Out, "      no etcd snapshot: %v; going on\n", err)
		facts["etcd_snapshot"] = "skipped: etcd down"
	case err != nil:
		fmt.Fprintf(r.Out, "      no etcd snapshot: %v; going on (the file backup is complete)\n", err)
		facts["etcd_snapshot"] = "skipped: failed"
	default:
		fmt.Fprintf(r.Out, "      etcd snapshot from %s: revision %d, %d keys, %d bytes, sha256 %.16s…\n", res.Endpoint, res.Revision, res.TotalKey, res.Size, res.SHA256)
		facts["etcd_snapshot"] = res.SHA256
	}
}

// Preflight checks, before any change, that every directory to be written
// is writable (a read-only root stops here) and that the state dir is.
func (r *Runner) Preflight(planned []PlannedStage) error {
	dirs := map[string]bool{r.StateDir: true}
	for _, ps := range planned {
		for _, a := range ps.Actions {
			for _, p := range a.Paths {
				dirs[filepath.Dir(r.Node.Path(p))] = true
			}
		}
	}
	var keys []string
	for d := range dirs {
		keys = append(keys, d)
	}
	sort.Strings(keys)
	for _, d := range keys {
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := unix.Access(d, unix.W_OK); err != nil {
			hint := "check permissions"
			if errors.Is(err, unix.EROFS) {
				hint = "the filesystem is mounted read-only: remount it read-write (mount -o remount,rw) or run a rehearsal on a copy with --root"
			}
			return &PreconditionError{Stage: "preflight", Err: fmt.Errorf("%s is not writable: %v; %s", d, err, hint)}
		}
	}
	return nil
}

// Apply runs the planned stages, skipping actions the journal shows done
// and re-checking any left in flight by a crash.
func (r *Runner) Apply(ctx context.Context, planned []PlannedStage, sel string) error {
	if len(r.records) == 0 {
		r.Selection = sel
		if err := r.appendRunStart(); err != nil {
			return err
		}
	}
	states, _ := r.states()
	total := len(planned)
	for i, ps := range planned {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		fmt.Fprintf(r.Out, "[%d/%d] %s: %s\n", i+1, total, ps.Stage.Name, ps.Stage.Short)
		// Stage records need no fsync of their own (durable with the
		// stage's first intent or the next stage's): resume goes by the
		// actions' records, not by these.
		if err := r.appendLazy(journal.Record{Kind: journal.KindStageStart, Stage: ps.Stage.Name}); err != nil {
			return err
		}
		for i := 0; i < len(ps.Actions); i++ {
			a := ps.Actions[i]
			st := states[a.ID]
			if st != nil && st.done && !st.undone {
				fmt.Fprintf(r.Out, "      = %s (done earlier)\n", a.Summary)
				continue
			}
			astart := time.Now()
			var err error
			switch {
			case a.Files != nil && ps.Stage.Independent:
				// this and the following file actions not yet done: one group
				group, sts := []Action{a}, []*actionState{st}
				for i+1 < len(ps.Actions) && ps.Actions[i+1].Files != nil {
					next := ps.Actions[i+1]
					if nst := states[next.ID]; nst != nil && nst.done && !nst.undone {
						break
					}
					group, sts = append(group, next), append(sts, states[next.ID])
					i++
				}
				err = r.applyFileGroup(ctx, ps.Stage.Name, group, sts, func(a Action) {
					fmt.Fprintf(r.Out, "      ✓ %s\n", a.Summary) // made durable together: the stage's time says how long
				})
				var ge *groupError
				if errors.As(err, &ge) && ge.action != "" {
					a = r.actionByID(group, ge.action)
				}
				if err == nil {
					continue
				}
			case a.Files != nil:
				err = r.applyFiles(ctx, ps.Stage.Name, a, st)
			case a.Run != nil:
				err = r.applyRun(ctx, ps.Stage.Name, a, st)
			}
			if err != nil {
				_ = r.append(journal.Record{Kind: journal.KindFailed, Stage: ps.Stage.Name, Action: a.ID,
					Data: map[string]string{"error": err.Error()}})
				var pe *PreconditionError
				if errors.As(err, &pe) {
					return err
				}
				return &StageError{Stage: ps.Stage.Name, Action: a.ID, Err: err}
			}
			if last := r.records[len(r.records)-1]; last.Action == a.ID && last.Data["skipped"] != "" {
				// Journaled as skipped, shown as skipped: not done.
				fmt.Fprintf(r.Out, "      - skipped: %s\n", a.Summary)
				r.skipped = append(r.skipped, ps.Stage.Name+": "+a.Summary)
				continue
			}
			fmt.Fprintf(r.Out, "      ✓ %s (%s)\n", a.Summary, round(time.Since(astart)))
		}
		if len(ps.Actions) == 0 {
			note := ps.Note
			if note == "" {
				note = "nothing to do"
			}
			fmt.Fprintf(r.Out, "      - %s\n", note)
		}
		d := time.Since(start)
		if err := r.appendLazy(journal.Record{Kind: journal.KindStageEnd, Stage: ps.Stage.Name,
			Data: map[string]string{"duration": d.String()}}); err != nil {
			return err
		}
		fmt.Fprintf(r.Out, "      %s done in %s\n", ps.Stage.Name, round(d))
	}
	return nil
}

// sweepTemps removes the temporary files an atomic write left beside its
// target when the process was killed between creating and renaming them
// (".NAME.kubecpr-*", never the target itself): for every path the run's
// journal names.
func (r *Runner) sweepTemps() {
	// kubecpr's own state files are written the same way.
	for _, p := range []string{r.currentFile(), filepath.Join(r.backupDir(), "manifest.json")} {
		for _, m := range r.files().SweepTemps(p) {
			fmt.Fprintf(r.Out, "removed %s, a temporary file left by an interrupted write\n", m)
		}
	}
	seen := map[string]bool{}
	for _, rec := range r.records {
		for _, c := range rec.Changes {
			if seen[c.Path] {
				continue
			}
			seen[c.Path] = true
			for _, m := range r.files().SweepTemps(r.Node.Path(c.Path)) {
				fmt.Fprintf(r.Out, "removed %s, a temporary file left by an interrupted write\n", m)
			}
		}
	}
}

func (r *Runner) appendRunStart() error {
	return r.append(journal.Record{Kind: journal.KindRunStart,
		Start:   &journal.Start{Root: r.Node.Root, Now: r.Clock.UTC(), Selection: r.Selection},
		Options: r.Recorded})
}

// CloseRestored closes run id after its backup was restored outside the
// journal (`kubecpr backup restore`): a readable journal gets a run-end
// record "restored"; a damaged one is kept aside as journal.log.damaged
// and the run stops being current. Either way the node is no longer held
// by a run that cannot continue: the documented way out of exit 5.
func CloseRestored(stateDir, id string) (closed bool, err error) {
	cur, open, _, err := CurrentRun(stateDir)
	if cur != id {
		return false, nil
	}
	jp := filepath.Join(stateDir, "runs", id, "journal.log")
	if err == nil {
		if !open {
			return false, nil
		}
		j, err := journal.Open(jp)
		if err != nil {
			return false, err
		}
		defer j.Close()
		_, err = j.Append(journal.Record{RunID: id, Kind: journal.KindRunEnd, Data: map[string]string{"status": "restored"}})
		return err == nil, err
	}
	if !errors.Is(err, journal.ErrCorrupt) {
		return false, err
	}
	if _, statErr := os.Lstat(jp); statErr == nil {
		if err := atomicfile.Rename(jp, jp+".damaged"); err != nil {
			return false, err
		}
	}
	return true, atomicfile.Remove(filepath.Join(stateDir, "current"))
}

// RecordedOptions returns the options and selection a run was started
// with, from its run-start record, with the live options given anew
// since (options records) on top.
func RecordedOptions(recs []journal.Record) (opts map[string]string, selection string, clock time.Time, err error) {
	found := false
	for _, rec := range recs {
		switch rec.Kind {
		case journal.KindRunStart:
			if rec.Start == nil {
				return nil, "", time.Time{}, fmt.Errorf("%w: run-start record %d has no start (root, clock, selection)", journal.ErrCorrupt, rec.Seq)
			}
			found = true
			opts = map[string]string{}
			for k, v := range rec.Options {
				opts[k] = v
			}
			clock, selection = rec.Start.Now, rec.Start.Selection
		case journal.KindOptions:
			// Live options given anew when the run continued.
			for k, v := range rec.Options {
				opts[k] = v
			}
		}
	}
	if !found {
		return nil, "", time.Time{}, fmt.Errorf("%w: no run-start record", journal.ErrCorrupt)
	}
	return opts, selection, clock, nil
}

// Complete closes the run (after the last stage of the whole pipeline).
func (r *Runner) Complete() error {
	return r.append(journal.Record{Kind: journal.KindRunEnd, Data: map[string]string{"status": "complete"}})
}

func round(d time.Duration) time.Duration {
	if d > time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(100 * time.Microsecond)
}

// fileState is the identity of what is at a host path now.
func fileState(p string) (journal.State, error) {
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return journal.Absent(), nil
	}
	if err != nil {
		return journal.State{}, err
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		t, err := os.Readlink(p)
		return journal.LinkTo(t), err
	}
	if !st.Mode().IsRegular() {
		return journal.OtherMode(st.Mode()), nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return journal.State{}, err
	}
	return journal.FileSum(pki.SHA256(b)), nil
}

// opState is what op makes its path hold.
func opState(op node.FileOp) journal.State {
	if op.IsLink() {
		return journal.LinkTo(op.Link)
	}
	return journal.FileSum(pki.SHA256(op.Data))
}

func (r *Runner) applyFiles(ctx context.Context, stage string, a Action, st *actionState) error {
	return r.applyFileGroup(ctx, stage, []Action{a}, []*actionState{st}, nil)
}

// preparedFiles is a file action ready to write: its intent and the
// operations that change something.
type preparedFiles struct {
	a      Action
	intent journal.Record
	ops    []node.FileOp
}

// prepareFiles settles what an interrupted attempt of a left (done when
// its files already hold what it promised; else the files it created are
// removed) and computes its operations and intent record. done is true
// when nothing is left to write.
func (r *Runner) prepareFiles(ctx context.Context, stage string, a Action, st *actionState, m *backup.Manifest) (p preparedFiles, done bool, err error) {
	if st != nil && st.lastIntent != nil && !st.done {
		// In flight when the last run stopped: if every file already holds
		// what the intent promised, the action completed.
		if r.intentReached(st.lastIntent) {
			fmt.Fprintf(r.Out, "      ~ %s: completed before the crash, verified by sha256\n", a.ID)
			return p, true, r.append(journal.Record{Kind: journal.KindDone, Stage: stage, Action: a.ID, Data: map[string]string{"verified": "resume"}})
		}
		// Redoing an interrupted attempt: the files it created (absent
		// before the action) go first, so the plan sees the node as the
		// action found it and picks the same names (a power loss can keep
		// a new kubelet pem while losing the link's change).
		if err := r.removeCreated(a.ID, st); err != nil {
			return p, false, err
		}
	}
	ops, err := a.Files(ctx)
	if err != nil {
		return p, false, err
	}
	// Non-nil even without files: what marks a file action's intent.
	rec := journal.Record{Kind: journal.KindIntent, Stage: stage, Action: a.ID, Changes: make([]journal.Change, 0, len(ops))}
	for i := range ops {
		ops[i].Path = r.Node.Resolve(ops[i].Path, true)
	}
	changed := ops[:0]
	for _, op := range ops {
		host := r.Node.Path(op.Path)
		old, err := fileState(host)
		if err != nil {
			return p, false, fmt.Errorf("%s: %w", op.Path, err)
		}
		if old == opState(op) && unchangedMode(host, op) {
			// Already holds these bytes (a key kept across a renewal):
			// nothing to write, journal or restore.
			continue
		}
		changed = append(changed, op)
		if !old.IsAbsent() {
			if _, ok := m.Lookup(op.Path); !ok && !createdByThisAction(st, op.Path) {
				return p, false, fmt.Errorf("%s is not in the backup %s: refusing to change a file that cannot be restored", op.Path, r.backupDir())
			}
		}
		rec.Changes = append(rec.Changes, journal.Change{Path: op.Path, Old: old, New: opState(op)})
	}
	return preparedFiles{a: a, intent: rec, ops: changed}, false, nil
}

// groupError is a failure of a group of file actions, naming the action.
type groupError struct {
	action string
	err    error
}

func (e *groupError) Error() string { return e.err.Error() }
func (e *groupError) Unwrap() error { return e.err }

// applyFileGroup applies file actions whose operations do not depend on
// one another's writes (one stage's renewals) with the write-ahead
// protocol, as one group: every action's intent is journaled and the last
// one fsynced (one journal fsync for all), then every file is written to
// a temporary file beside its target, all are fsynced at once, renamed
// in order, and their directories fsynced once each, at once. Each
// action's done record needs no fsync of its own: the next durable record
// (or the journal's close) makes it durable, and without it resume
// verifies the files by sha256 and rollback restores them — the
// power-loss tests check every state in between. show, when set, is
// called for each action applied.
func (r *Runner) applyFileGroup(ctx context.Context, stage string, acts []Action, sts []*actionState, show func(Action)) error {
	var m *backup.Manifest
	var ready []preparedFiles
	for i, a := range acts {
		if m == nil {
			var err error
			if m, err = r.backup(); err != nil {
				return &groupError{a.ID, err}
			}
		}
		p, done, err := r.prepareFiles(ctx, stage, a, sts[i], m)
		if err != nil {
			return &groupError{a.ID, err}
		}
		if done {
			continue
		}
		ready = append(ready, p)
	}
	for i, p := range ready {
		appendFn := r.appendLazy
		if i == len(ready)-1 {
			appendFn = r.append
		}
		if err := appendFn(p.intent); err != nil {
			return &groupError{p.a.ID, err}
		}
	}
	files := r.files().Batch()
	defer files.Discard()
	for _, p := range ready {
		for _, op := range p.ops {
			if err := ctx.Err(); err != nil {
				return &groupError{p.a.ID, err}
			}
			host := r.Node.Path(op.Path)
			var err error
			if op.IsLink() {
				err = files.ReplaceSymlink(host, op.Link)
			} else {
				err = files.WriteFile(host, op.Data, atomicfile.Options{Mode: op.Mode, ForceMode: op.Secret, Owner: true})
			}
			if err != nil {
				return &groupError{p.a.ID, err}
			}
		}
	}
	if err := files.Flush(); err != nil {
		return &groupError{r.actionOf(ready, err), err}
	}
	for _, p := range ready {
		if err := r.appendLazy(journal.Record{Kind: journal.KindDone, Stage: stage, Action: p.a.ID}); err != nil {
			return &groupError{p.a.ID, err}
		}
		if show != nil {
			show(p.a)
		}
	}
	return nil
}

// actionOf names the action of a group whose file an error names (the
// first one when none does).
func (r *Runner) actionOf(ready []preparedFiles, err error) string {
	for _, p := range ready {
		for _, op := range p.ops {
			if strings.Contains(err.Error(), r.Node.Path(op.Path)) {
				return p.a.ID
			}
		}
	}
	if len(ready) == 0 {
		return ""
	}
	return ready[0].a.ID
}

// actionByID returns the action of acts with id.
func (r *Runner) actionByID(acts []Action, id string) Action {
	for _, a := range acts {
		if a.ID == id {
			return a
		}
	}
	return acts[0]
}

// backup is this run's backup manifest, loaded once (a complete backup
// never changes).
func (r *Runner) backup() (*backup.Manifest, error) {
	if r.manifest != nil && r.manifestDir == r.backupDir() {
		return r.manifest, nil
	}
	m, err := backup.Load(r.backupDir())
	if err != nil {
		return nil, fmt.Errorf("no complete backup for run %s at %s: %w", r.runID, r.backupDir(), err)
	}
	r.manifest, r.manifestDir = m, r.backupDir()
	return m, nil
}

// unchangedMode reports whether writing op over host, which already holds
// op's bytes, would leave its mode as it is: a secret is written with its
// mode forced (a key left 0644 is corrected), anything else keeps its own.
func unchangedMode(host string, op node.FileOp) bool {
	if op.IsLink() || !op.Secret {
		return true
	}
	st, err := os.Lstat(host)
	if err != nil {
		return false
	}
	want := op.Mode
	if want == 0 {
		want = 0o600
	}
	return st.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) == want
}

// removeCreated removes the files that the intents of action (from its
// first intent on) created and that still hold what was promised: left by
// an attempt that did not finish. A file holding anything else is not
// ours to remove and stays.
func (r *Runner) removeCreated(action string, st *actionState) error {
	for _, rec := range r.intentsSince(st.firstIntent) {
		linked := false // a link of this attempt already points at its new file: keep it
		for _, c := range rec.Changes {
			if c.New.IsLink() {
				if got, err := fileState(r.Node.Path(c.Path)); err == nil && got == c.New {
					linked = true
				}
			}
		}
		for _, c := range rec.Changes {
			if linked || !c.Old.IsAbsent() {
				continue
			}
			host := r.Node.Path(c.Path)
			if got, err := fileState(host); err != nil || got != c.New {
				continue
			}
			if err := r.files().Remove(host); err != nil {
				return fmt.Errorf("%s, created by an interrupted attempt of %s: %w", c.Path, action, err)
			}
			fmt.Fprintf(r.Out, "      ~ %s: removed %s, left by the interrupted attempt\n", action, c.Path)
		}
	}
	return nil
}

// intentsSince returns the intents of first's action from first on: the
// attempts of the action since it was last undone.
func (r *Runner) intentsSince(first *journal.Record) []journal.Record {
	var out []journal.Record
	for _, rec := range r.records {
		if rec.Action == first.Action && rec.Kind == journal.KindIntent && rec.Seq >= first.Seq {
			out = append(out, rec)
		}
	}
	return out
}

func (r *Runner) intentReached(rec *journal.Record) bool {
	if len(rec.Changes) == 0 {
		return false
	}
	for _, c := range rec.Changes {
		got, err := fileState(r.Node.Path(c.Path))
		if err != nil || got != c.New {
			return false
		}
	}
	return true
}

func (r *Runner) applyRun(ctx context.Context, stage string, a Action, st *actionState) error {
	if st != nil && st.lastIntent != nil && !st.done && a.Applied != nil && a.Applied(ctx, st.lastIntent.Data) {
		return r.append(journal.Record{Kind: journal.KindDone, Stage: stage, Action: a.ID, Data: map[string]string{"verified": "resume"}})
	}
	if err := r.append(journal.Record{Kind: journal.KindIntent, Stage: stage, Action: a.ID}); err != nil {
		return err
	}
	facts, err := a.Run(ctx)
	if err != nil {
		return err
	}
	return r.append(journal.Record{Kind: journal.KindDone, Stage: stage, Action: a.ID, Data: facts})
}

// Rollback undoes every applied or in-flight action of the current run in
// reverse order, restoring files byte for byte from the backup. It keeps
// going past failures and returns all of them.
func (r *Runner) Rollback(ctx context.Context) error {
	states, order := r.states()
	var m *backup.Manifest
	var errs []error
	undone := 0
	type deferred struct {
		id    string
		rec   *journal.Record
		facts map[string]string
	}
	var restarts []deferred
	finish := func(id, stage, note string) error {
		undone++
		fmt.Fprintf(r.Out, "      ↶ %s %s\n", note, id)
		return r.append(journal.Record{Kind: journal.KindUndone, Stage: stage, Action: id})
	}
	for i := len(order) - 1; i >= 0; i-- {
		id := order[i]
		st := states[id]
		if st.undone || st.firstIntent == nil {
			continue
		}
		// Only the first occurrence in order carries the original state.
		if first := indexOf(order, id); first != i {
			continue
		}
		rec := st.firstIntent
		if !rec.FileIntent() {
			stage := r.stage(rec.Stage)
			if stage == nil || stage.Undo == nil {
				if err := r.append(journal.Record{Kind: journal.KindUndoIntent, Stage: rec.Stage, Action: id}); err != nil {
					return err
				}
				if err := finish(id, rec.Stage, "nothing to undo for"); err != nil {
					return err
				}
				continue
			}
			var facts map[string]string
			if st.doneRec != nil {
				facts = st.doneRec.Data
			}
			restarts = append(restarts, deferred{id, rec, facts})
			continue
		}
		if err := r.append(journal.Record{Kind: journal.KindUndoIntent, Stage: rec.Stage, Action: id}); err != nil {
			return err
		}
		if m == nil {
			var err error
			if m, err = backup.Load(r.backupDir()); err != nil {
				return fmt.Errorf("cannot roll back: backup %s: %w", r.backupDir(), err)
			}
		}
		if err := r.undoFiles(rec, st, m); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		if err := finish(id, rec.Stage, "undid"); err != nil {
			return err
		}
	}
	// Directories a stage created (certs.EnsureDirs, ids STAGE/mkdir:DIR)
	// go after the files in them and in reverse order, children before
	// parents (collected so already); then restarts last, in their
	// original order, so that processes come back on the restored files.
	var dirUndos, restartUndos []deferred
	for _, d := range restarts {
		if strings.Contains(d.id, "/mkdir:") {
			dirUndos = append(dirUndos, d)
		} else {
			restartUndos = append(restartUndos, d)
		}
	}
	slices.Reverse(dirUndos)
	restarts = append(restartUndos, dirUndos...)
	for i := len(restarts) - 1; i >= 0; i-- {
		d := restarts[i]
		if err := r.append(journal.Record{Kind: journal.KindUndoIntent, Stage: d.rec.Stage, Action: d.id}); err != nil {
			return err
		}
		if err := r.stage(d.rec.Stage).Undo(ctx, data{r}, d.id, d.facts); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.id, err))
			continue
		}
		if err := finish(d.id, d.rec.Stage, "undid"); err != nil {
			return err
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// The journal says what was undone; the backup says what the node must
	// be. A journal that lost records must not pass for a clean rollback.
	if _, err := backup.Load(r.backupDir()); err == nil {
		diffs, err := backup.Differences(r.Node.Root, r.backupDir())
		if err != nil {
			return fmt.Errorf("comparing the node with the backup %s: %w", r.backupDir(), err)
		}
		if len(diffs) > 0 {
			return fmt.Errorf("after undoing %d actions, %d paths still differ from the backup %s: %s. "+
				"The journal does not account for them (changed outside kubecpr, or journal records lost): "+
				"`kubecpr backup restore %s --prune --dry-run` lists them, `kubecpr backup restore %s --prune` puts the backup back and closes the run",
				undone, len(diffs), r.backupDir(), strings.Join(diffs, ", "), r.runID, r.runID)
		}
	}
	fmt.Fprintf(r.Out, "rolled back %d actions of run %s\n", undone, r.runID)
	return r.append(journal.Record{Kind: journal.KindRunEnd, Data: map[string]string{"status": "rolled-back"}})
}

func (r *Runner) stage(name string) *Stage {
	for i := range r.Stages {
		if r.Stages[i].Name == name {
			return &r.Stages[i]
		}
	}
	return nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

func (r *Runner) undoFiles(first *journal.Record, st *actionState, m *backup.Manifest) error {
	// Every path any intent of this action touched, with its original state
	// from the first intent (a redo after a crash records a later "old").
	orig := map[string]journal.State{}
	var paths []string
	for _, rec := range r.intentsSince(first) {
		for _, c := range rec.Changes {
			if _, seen := orig[c.Path]; !seen {
				orig[c.Path] = c.Old
				paths = append(paths, c.Path)
			}
		}
	}
	var errs []error
	for i := len(paths) - 1; i >= 0; i-- {
		p := paths[i]
		host := r.Node.Path(p)
		want := orig[p]
		if e, ok := m.Lookup(p); ok {
			if err := backup.RestoreEntryOn(r.FS, r.Node.Root, r.backupDir(), e); err != nil {
				errs = append(errs, err)
				continue
			}
		} else if want.IsAbsent() {
			if err := r.files().Remove(host); err != nil {
				errs = append(errs, err)
				continue
			}
		} else {
			errs = append(errs, fmt.Errorf("%s is not in the backup; it was %s before the run", p, want))
			continue
		}
		got, err := fileState(host)
		if err != nil {
			errs = append(errs, err)
		} else if got != want {
			errs = append(errs, fmt.Errorf("%s after restore is %s, expected %s", p, got, want))
		}
	}
	return errors.Join(errs...)
}

// Records returns the journal records of the run.
func (r *Runner) Records() []journal.Record { return append([]journal.Record(nil), r.records...) }

// nodeDirOf is the node directory of a node path.
func nodeDirOf(p string) string { return path.Dir(p) }

var _ = nodeDirOf

// createdByThisAction reports whether an earlier, interrupted attempt of the
// same action created path (its first intent recorded it as absent):
// rollback removes it again, so it needs no backup.
func createdByThisAction(st *actionState, p string) bool {
	if st == nil || st.firstIntent == nil {
		return false
	}
	for _, c := range st.firstIntent.Changes {
		if c.Path == p && c.Old.IsAbsent() {
			return true
		}
	}
	return false
}

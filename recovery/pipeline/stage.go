// Package pipeline runs kubecpr's recovery stages: each stage plans a list
// of concrete actions, and one runner applies them in order with a
// write-ahead journal, so a crash at any instant can be resumed or rolled
// back. Phases never write files themselves: they return file operations
// and the runner backs up, journals and writes them atomically.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/fsys"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/recovery/service"
)

// Options are the user's choices for a run.
type Options struct {
	Validity              time.Duration // lifetime of re-issued certificates (default 1y)
	RenewWithin           time.Duration // 0: renew every leaf (as kubeadm); else only those expiring within
	RotateKeys            bool          // new private keys (same algorithm and size)
	CSRDir                string        // external CA: where CSRs and keys go (host path)
	MigrateOrganizations  bool          // kubeadm 1.29+ admin.conf / super-admin.conf organisations
	UpdateUserKubeconfigs bool          // refresh ~/.kube/config files that point at this cluster
	// KubeletClientBundle is a host path holding a kubelet client
	// certificate and key (PEM) signed elsewhere — by `kubecpr cluster` on a
	// control-plane node for a worker, which has no CA key. It is installed
	// as the kubelet's rotating pem instead of signing one here.
	KubeletClientBundle string
	// KubeletBootstrapTokenFile is a host path holding a bootstrap token
	// ("<id>.<secret>", made by `kubecpr cluster --workers bootstrap`):
	// instead of renewing the kubelet's client credential, the kubeconfigs
	// stage writes bootstrap-kubelet.conf with it, so the restarted kubelet
	// requests a new certificate itself.
	KubeletBootstrapTokenFile string
	// APIServerCertExtraSANs are IP addresses and DNS names the API server
	// certificate must carry besides its own (--apiserver-cert-extra-sans,
	// as kubeadm's flag): it is re-issued with them added, or created with
	// them when missing. The kubeadm config's apiServer.certSANs are added
	// the same way.
	APIServerCertExtraSANs []string
	DryRun                 bool
	// RenewCA re-issues CA certificates with their own keys (--renew-ca).
	RenewCA CARenewal
	// CACertificates are host paths of CA certificates re-issued elsewhere
	// (`kubecpr cluster run --renew-ca`, once for the whole cluster): each
	// replaces the node's certificate of the same CA (same subject and
	// key) and every older copy of it (--ca-certificate).
	CACertificates []string
	// CSR are the csr stage's options.
	CSR CSROptions
}

// CARenewal selects the CAs the certs stage re-issues: none unless
// Enabled; with Enabled, Names, or when empty every CA that is expired,
// not yet valid, or expiring within the run's warning window.
type CARenewal struct {
	Enabled bool
	Names   []string
}

// Wants reports whether the CA named name, in status st, is to be renewed.
func (c CARenewal) Wants(name string, due bool) bool {
	if !c.Enabled {
		return false
	}
	if len(c.Names) == 0 {
		return due
	}
	for _, n := range c.Names {
		if n == name {
			return true
		}
	}
	return false
}

// CSROptions are the csr stage's options (from the CLI; the stage reads
// them from Data.Options, never from a package variable).
type CSROptions struct {
	APIServerBinary string        // start the recovery server from this binary
	EtcdBinary      string        // start etcd from its manifest when it is down
	CRISocket       string        // containerd mode of the recovery server (live node) when no binary is given
	BootstrapToken  time.Duration // >0: create a bootstrap token of this lifetime and a bootstrap kubeconfig
	RecoveryTTL     time.Duration // its credentials' lifetime
	Wait            time.Duration // how long to wait for CSRs (0: one pass)
	ApproveNode     string        // approve only this node
	Sign            string        // auto, always, never (csr.SignMode)
	MaxLifetime     time.Duration
	StateDir        string // host path (the recovery server lives there)
	// Linger keeps the recovery server up after the last approval so
	// kubelets can fetch their certificates (default 10s).
	Linger time.Duration
	// Ready is called with the recovery server's kubeconfig path once it
	// answers (status output; tests use it to play a kubelet).
	Ready func(kubeconfig string)
}

// Data is the narrow view a stage has of the run: paths, clock, options,
// output. Stages never reach for globals.
type Data interface {
	Node() *node.Node
	Cluster() *node.Cluster
	Now() time.Time
	Options() Options
	// Inventory reads and judges the node's credentials as they are now,
	// each CA planned for renewal (PlanCA) as it will be.
	Inventory() (*inventory.Inventory, error)
	// PlanCA records that this run re-issues the CA named name as ca: the
	// plans of this and later stages see the node as it will be once the
	// new CA certificate is written (the same key, a valid certificate).
	PlanCA(name string, ca *pki.CA)
	Out() io.Writer
	RunID() string
	// BackupDir is the host path of this run's backup.
	BackupDir() string
	// Live is how to act on the node's processes, or nil when this run
	// must not touch processes (a copy of a node under --root, a rehearsal).
	Live() *Live
	// ApplyFiles writes files from inside a Run action through the same
	// write-ahead protocol as a Files action (backup checked, intent with
	// old and new hashes, atomic writes, done), as its own action id:
	// rollback restores them like any other file change.
	ApplyFiles(ctx context.Context, stage, actionID string, ops []node.FileOp) error
	// FS is how a stage changes files itself (a directory it creates):
	// the run's filesystem.
	FS() fsys.FS
}

// Live carries the interfaces to the node's running parts.
type Live struct {
	// Runtime connects to the container runtime (lazily: a rehearsal never
	// dials it).
	Runtime func() (runtime.Runtime, error)
	// Services restarts the kubelet.
	Services service.Manager
	// RestartMethod is "containerd" (stop the container, the kubelet
	// recreates it) or "manifests" (move the manifest out and back).
	RestartMethod string
	// ComponentTimeout bounds each component's restart and health wait.
	ComponentTimeout time.Duration
	// Grace is the SIGTERM grace period before SIGKILL.
	Grace time.Duration
	// ManifestWait is how long the manifests method waits for the kubelet
	// to stop a component whose manifest it moved out before stopping the
	// container through the runtime itself (default 20 s, the kubelet's
	// default fileCheckFrequency). A kubelet that cannot reach the API
	// server never removes a static pod ("skipping delete because sources
	// aren't ready yet").
	ManifestWait time.Duration
	// RestartDaemonSets are NAMESPACE/NAME DaemonSets to roll once the API
	// server is back (workloads holding their own client certificates).
	RestartDaemonSets []string
	// Inspect connects to the container runtime for reading only: a dry
	// run has it instead of Runtime, so that the plan lists the containers
	// the bounce stage would restart (found by their mounts).
	Inspect func() (runtime.Runtime, error)
	// Close releases the runtime connection if one was made (it never
	// dials: a run that did not need the runtime exits at once).
	Close func()
	// KubeletDown is set by a rollback's kubelet restart when the kubelet
	// does not answer its /healthz afterwards (a kubeadm kubelet whose
	// restored client certificate is expired exits at start): the static
	// pods' restarts that follow would wait for a container it never
	// creates.
	KubeletDown string
}

// Action is one concrete step of a stage's plan.
type Action struct {
	ID      string   // stable within a run: "certs/apiserver"
	Summary string   // one line for the plan and progress output
	Paths   []string // node paths it may write (known at plan time, backed up first)

	// Files computes the file operations at apply time; the runner
	// journals, backs up and writes them. Content is never journaled.
	Files func(ctx context.Context) ([]node.FileOp, error)
	// Run performs an action that is not a file write (backup, restart).
	// It returns facts to journal (never secrets).
	Run func(ctx context.Context) (map[string]string, error)
	// Undo reverses a Run action, given what Run journaled.
	Undo func(ctx context.Context, rec map[string]string) error
	// Applied reports whether a Run action's effect is already in place,
	// for resume after a crash in the middle of it.
	Applied func(ctx context.Context, rec map[string]string) bool
}

// Stage is one step of the pipeline, as data.
type Stage struct {
	Name  string
	Short string
	// Mutates is true when the stage changes the node (needs backup+lock).
	Mutates bool
	// Live is true when the stage needs running processes (rehearse only
	// reports what it would do).
	Live bool
	// Independent is true when none of the stage's file actions reads
	// what another of them writes (each renews its own credential from
	// the CA): the runner then prepares consecutive file actions together
	// and makes their intents, files and directories durable with one
	// round of fsyncs each instead of one per action.
	Independent bool
	Plan        func(ctx context.Context, d Data) ([]Action, error)
	// Undo reverses one of the stage's Run actions during rollback, after
	// every file has been restored (so a restart runs on the old files).
	Undo func(ctx context.Context, d Data, actionID string, facts map[string]string) error
}

// PreconditionError stops a run before any change: bad input, expired CA,
// missing CA key, no space, read-only disk.
type PreconditionError struct {
	Stage string
	Err   error
}

func (e *PreconditionError) Error() string {
	return fmt.Sprintf("%s: %v (nothing was changed)", e.Stage, e.Err)
}
func (e *PreconditionError) Unwrap() error { return e.Err }

// ExternalCAError stops a run after CSRs were written for an external CA.
type ExternalCAError struct {
	CSRDir string
	CSRs   []string
}

func (e *ExternalCAError) Error() string {
	return fmt.Sprintf("the CA key is not on this node (external CA): wrote %d certificate signing requests to %s; "+
		"have your CA sign each <name>.csr into <name>.crt in that directory, then run `kubecpr run --csr-dir %s` again to install them",
		len(e.CSRs), e.CSRDir, e.CSRDir)
}

// StageError is a failure after changes may have begun.
type StageError struct {
	Stage  string
	Action string
	Err    error
}

func (e *StageError) Error() string {
	where := e.Stage
	if e.Action != "" {
		where = e.Action
	}
	return fmt.Sprintf("%s: %v\nthe journal records every change so far: `kubecpr resume` continues, `kubecpr rollback` restores the backup, `kubecpr status` shows where it stopped", where, e.Err)
}
func (e *StageError) Unwrap() error { return e.Err }

// Selection narrows which stages run.
type Selection struct {
	Only        []string
	From, Until string
}

// Select returns the stages chosen, in pipeline order, or an error naming
// an unknown stage and listing the known ones.
func Select(stages []Stage, sel Selection) ([]Stage, error) {
	known := map[string]int{}
	var names []string
	for i, s := range stages {
		known[s.Name] = i
		names = append(names, s.Name)
	}
	check := func(n string) error {
		if _, ok := known[n]; !ok {
			return fmt.Errorf("unknown stage %q (stages: %s)", n, strings.Join(names, ", "))
		}
		return nil
	}
	if len(sel.Only) > 0 && (sel.From != "" || sel.Until != "") {
		return nil, errors.New("--only cannot be combined with --from/--until")
	}
	if len(sel.Only) > 0 {
		want := map[string]bool{}
		for _, n := range sel.Only {
			if err := check(n); err != nil {
				return nil, err
			}
			want[n] = true
		}
		var out []Stage
		for _, s := range stages {
			if want[s.Name] {
				out = append(out, s)
			}
		}
		return out, nil
	}
	from, until := 0, len(stages)-1
	if sel.From != "" {
		if err := check(sel.From); err != nil {
			return nil, err
		}
		from = known[sel.From]
	}
	if sel.Until != "" {
		if err := check(sel.Until); err != nil {
			return nil, err
		}
		until = known[sel.Until]
	}
	if from > until {
		return nil, fmt.Errorf("--from %s comes after --until %s", sel.From, sel.Until)
	}
	return stages[from : until+1], nil
}

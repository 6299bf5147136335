package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/kubecpr/kubecpr/recovery/inventory"
)

// Output formats of -o/--output. "table" is the old name of "text" and
// still accepted.
const (
	formatText = "text"
	formatJSON = "json"
	formatYAML = "yaml"
)

// APIVersion versions every document kubecpr writes with -o json|yaml
// (docs/schema.md): one version for all kinds, the one `check` has used
// from the start. Within it fields are only added.
const APIVersion = inventory.ReportAPIVersion

// Kinds of the documents in docs/schema.md.
const (
	kindPlan                 = "Plan"
	kindRunReport            = "RunReport"
	kindRunStatus            = "RunStatus"
	kindBackupList           = "BackupList"
	kindRecoveryServerStatus = "RecoveryServerStatus"
	kindClusterPlan          = "ClusterPlan"
	kindClusterRunStatus     = "ClusterRunStatus"
	kindKubeconfigExport     = "KubeconfigExport"
)

// machineOutput lists the commands that write a document with -o
// json|yaml. Any other command refuses those formats instead of moving its
// text to stderr and leaving stdout empty.
var machineOutput = map[string]bool{
	"check": true, "check-expiration": true, "diagnose": true,
	"plan": true, "run": true, "resume": true, "status": true,
	"backup list": true, "recovery-server status": true,
	"facts": true, "cluster plan": true, "cluster run": true, "cluster resume": true, "cluster status": true,
	"kubeconfig export": true,
}

// outputFormat reads and checks -o: an unknown format is a usage error.
func outputFormat(c *cli.Context) (string, error) {
	switch f := c.String("output"); f {
	case formatText, "table", "":
		return formatText, nil
	case formatJSON, formatYAML:
		if name := commandName(c); name != "" && !machineOutput[name] {
			return "", withCode(ExitFailed, fmt.Errorf("-o %s: `kubecpr %s` writes no %s document; -o json|yaml applies to check, diagnose, plan, run, resume, status, backup list, recovery-server status, cluster plan|run|resume|status and kubeconfig export (docs/schema.md)", f, name, f))
		}
		return f, nil
	default:
		return "", withCode(ExitFailed, fmt.Errorf("-o %q: want text, json or yaml (docs/schema.md)", f))
	}
}

// commandName is the command's name below the app ("backup list").
func commandName(c *cli.Context) string {
	var names []string
	for _, ctx := range c.Lineage() {
		// cli wraps the app itself in a command named after it.
		if ctx.Command != nil && ctx.Command.Name != "" && ctx.Command.Name != c.App.Name {
			names = append([]string{ctx.Command.Name}, names...)
		}
	}
	return strings.Join(names, " ")
}

// machine reports whether the command writes a json/yaml document: then
// e.data (stdout) carries only that document, and progress and notes go to
// e.out (stderr), so `kubecpr run -o json | jq` reads one document.
func (e *env) machine() bool { return e.format == formatJSON || e.format == formatYAML }

// emit writes v as json or yaml; text output is the caller's.
func emit(w io.Writer, format string, v any) error {
	switch format {
	case formatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case formatYAML:
		// Through JSON, so that the yaml keys are the documented json names
		// for every type, including those without yaml tags, in the same
		// order: JSON is YAML, read here into a node tree whose flow style
		// and quoting are then dropped so that it is written block style.
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return err
		}
		blockStyle(&doc)
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(&doc); err != nil {
			return err
		}
		return enc.Close()
	}
	return fmt.Errorf("unknown format %q", format)
}

// blockStyle clears the styles JSON gave a node tree ({}, [] and double
// quotes); the encoder quotes a string again where YAML would read it as
// something else ("2026-11-22T03:00:00Z", "true", "8").
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// TypeMeta heads every document.
type TypeMeta struct {
	APIVersion string `json:"apiVersion" yaml:"apiVersion"`
	Kind       string `json:"kind" yaml:"kind"`
}

func typeMeta(kind string) TypeMeta { return TypeMeta{APIVersion: APIVersion, Kind: kind} }

// Credential is one credential as found on the node: what `plan` will
// renew and what `run` left.
type Credential struct {
	Name    string     `json:"name" yaml:"name"`
	Kind    string     `json:"kind" yaml:"kind"`
	Path    string     `json:"path" yaml:"path"`
	Status  string     `json:"status" yaml:"status"`
	Expires *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"`
}

// credentials lists the node's certificates and CAs as they are now.
func credentials(e *env) ([]Credential, error) {
	inv, err := e.inventory()
	if err != nil {
		return nil, err
	}
	rep := inv.Report()
	out := []Credential{}
	for _, list := range [][]inventory.CertReport{rep.Certs, rep.CAs} {
		for _, c := range list {
			out = append(out, Credential{Name: c.Name, Kind: c.Kind, Path: c.Path, Status: string(c.Status), Expires: c.Expires})
		}
	}
	return out, nil
}

// Plan is `kubecpr plan -o json|yaml` (and `run --dry-run`).
type Plan struct {
	TypeMeta    `yaml:",inline"`
	Root        string       `json:"root" yaml:"root"`
	Now         time.Time    `json:"now" yaml:"now"`
	Stages      []PlanStage  `json:"stages" yaml:"stages"`
	Credentials []Credential `json:"credentials" yaml:"credentials"`
}

// PlanStage is one stage of a Plan.
type PlanStage struct {
	Name        string       `json:"name" yaml:"name"`
	Description string       `json:"description" yaml:"description"`
	Note        string       `json:"note,omitempty" yaml:"note,omitempty"`
	Actions     []PlanAction `json:"actions" yaml:"actions"`
}

// PlanAction is one action of a PlanStage.
type PlanAction struct {
	ID      string   `json:"id" yaml:"id"`
	Summary string   `json:"summary" yaml:"summary"`
	Paths   []string `json:"paths" yaml:"paths"`
}

// RunReport is the final summary of `kubecpr run -o json|yaml` (and resume).
type RunReport struct {
	TypeMeta    `yaml:",inline"`
	RunID       string         `json:"runID" yaml:"runID"`
	Root        string         `json:"root" yaml:"root"`
	Now         time.Time      `json:"now" yaml:"now"`
	Result      string         `json:"result" yaml:"result"`
	Continued   bool           `json:"continued" yaml:"continued"`
	NextStage   string         `json:"nextStage,omitempty" yaml:"nextStage,omitempty"`
	Duration    string         `json:"duration" yaml:"duration"`
	Journal     string         `json:"journal" yaml:"journal"`
	Backup      string         `json:"backup" yaml:"backup"`
	Stages      []string       `json:"stagesDone" yaml:"stagesDone"`
	Skipped     []string       `json:"skipped" yaml:"skipped"`
	Actions     []ActionStatus `json:"actions" yaml:"actions"`
	Credentials []Credential   `json:"credentials" yaml:"credentials"`
}

// BackupList is `kubecpr backup list -o json|yaml`.
type BackupList struct {
	TypeMeta `yaml:",inline"`
	Dir      string        `json:"dir" yaml:"dir"`
	Backups  []BackupEntry `json:"backups" yaml:"backups"`
}

// BackupEntry is one backup of a BackupList.
type BackupEntry struct {
	RunID        string     `json:"runID" yaml:"runID"`
	Dir          string     `json:"dir" yaml:"dir"`
	Complete     bool       `json:"complete" yaml:"complete"`
	Error        string     `json:"error,omitempty" yaml:"error,omitempty"`
	Created      *time.Time `json:"created,omitempty" yaml:"created,omitempty"`
	Sources      []string   `json:"sources" yaml:"sources"`
	Entries      int        `json:"entries" yaml:"entries"`
	Bytes        int64      `json:"bytes" yaml:"bytes"`
	EtcdSnapshot bool       `json:"etcdSnapshot" yaml:"etcdSnapshot"`
}

// RecoveryServerStatus is `kubecpr recovery-server status -o json|yaml`.
type RecoveryServerStatus struct {
	TypeMeta   `yaml:",inline"`
	Running    bool       `json:"running" yaml:"running"`
	PID        int        `json:"pid,omitempty" yaml:"pid,omitempty"`
	Port       int        `json:"port,omitempty" yaml:"port,omitempty"`
	URL        string     `json:"url,omitempty" yaml:"url,omitempty"`
	Expires    *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"`
	Kubeconfig string     `json:"kubeconfig,omitempty" yaml:"kubeconfig,omitempty"`
}

// emitOrFail writes a command's document on e.data; a write that fails
// (a closed pipe) is the tool failing, exit 3.
func emitOrFail(e *env, v any) error {
	if err := emit(e.data, e.format, v); err != nil {
		return withCode(ExitFailed, fmt.Errorf("writing the %s document: %w", e.format, err))
	}
	return nil
}

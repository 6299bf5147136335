package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/phases"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/test/cluster"
)

// The documents of docs/schema.md, written here from the documentation and
// not shared with the code that writes them: a field the code adds or
// renames without the documentation fails the strict decoding below, and
// every key written must also be in the documented tables (schemaKeys).

type DocMeta struct {
	APIVersion string `json:"apiVersion" yaml:"apiVersion"`
	Kind       string `json:"kind" yaml:"kind"`
}

type docCredential struct {
	Name    string     `json:"name" yaml:"name"`
	Kind    string     `json:"kind" yaml:"kind"`
	Path    string     `json:"path" yaml:"path"`
	Status  string     `json:"status" yaml:"status"`
	Expires *time.Time `json:"expires" yaml:"expires"`
}

type docPlan struct {
	DocMeta `yaml:",inline"`
	Root    string    `json:"root" yaml:"root"`
	Now     time.Time `json:"now" yaml:"now"`
	Stages  []struct {
		Name        string `json:"name" yaml:"name"`
		Description string `json:"description" yaml:"description"`
		Note        string `json:"note" yaml:"note"`
		Actions     []struct {
			ID      string   `json:"id" yaml:"id"`
			Summary string   `json:"summary" yaml:"summary"`
			Paths   []string `json:"paths" yaml:"paths"`
		} `json:"actions" yaml:"actions"`
	} `json:"stages" yaml:"stages"`
	Credentials []docCredential `json:"credentials" yaml:"credentials"`
}

type docCert struct {
	Name              string     `json:"name" yaml:"name"`
	Kind              string     `json:"kind" yaml:"kind"`
	Path              string     `json:"path" yaml:"path"`
	KeyPath           string     `json:"keyPath" yaml:"keyPath"`
	Status            string     `json:"status" yaml:"status"`
	NotBefore         *time.Time `json:"notBefore" yaml:"notBefore"`
	Expires           *time.Time `json:"expires" yaml:"expires"`
	ResidualSeconds   int64      `json:"residualSeconds" yaml:"residualSeconds"`
	Residual          string     `json:"residual" yaml:"residual"`
	CA                string     `json:"certificateAuthority" yaml:"certificateAuthority"`
	ExternallyManaged bool       `json:"externallyManaged" yaml:"externallyManaged"`
	Serial            string     `json:"serial" yaml:"serial"`
	CommonName        string     `json:"commonName" yaml:"commonName"`
	Organizations     []string   `json:"organizations" yaml:"organizations"`
	DNSNames          []string   `json:"dnsNames" yaml:"dnsNames"`
	IPAddresses       []string   `json:"ipAddresses" yaml:"ipAddresses"`
	KeyType           string     `json:"keyType" yaml:"keyType"`
	Problems          []string   `json:"problems" yaml:"problems"`
}

type docCheckReport struct {
	DocMeta     `yaml:",inline"`
	Now         time.Time      `json:"now" yaml:"now"`
	Root        string         `json:"root" yaml:"root"`
	Cluster     map[string]any `json:"cluster" yaml:"cluster"`
	Certs       []docCert      `json:"certificates" yaml:"certificates"`
	CAs         []docCert      `json:"certificateAuthorities" yaml:"certificateAuthorities"`
	SAProblems  []string       `json:"serviceAccountKeyProblems" yaml:"serviceAccountKeyProblems"`
	Notes       []string       `json:"notes" yaml:"notes"`
	Worst       string         `json:"worstStatus" yaml:"worstStatus"`
	ExitCode    int            `json:"exitCode" yaml:"exitCode"`
	WarnSeconds int64          `json:"warnSeconds" yaml:"warnSeconds"`
}

type docAction struct {
	Action   string     `json:"action" yaml:"action"`
	Stage    string     `json:"stage" yaml:"stage"`
	State    string     `json:"state" yaml:"state"`
	Started  time.Time  `json:"started" yaml:"started"`
	Finished *time.Time `json:"finished" yaml:"finished"`
	Duration string     `json:"duration" yaml:"duration"`
	Error    string     `json:"error" yaml:"error"`
}

type docRunReport struct {
	DocMeta     `yaml:",inline"`
	RunID       string          `json:"runID" yaml:"runID"`
	Root        string          `json:"root" yaml:"root"`
	Now         time.Time       `json:"now" yaml:"now"`
	Result      string          `json:"result" yaml:"result"`
	Continued   bool            `json:"continued" yaml:"continued"`
	NextStage   string          `json:"nextStage" yaml:"nextStage"`
	Duration    string          `json:"duration" yaml:"duration"`
	Journal     string          `json:"journal" yaml:"journal"`
	Backup      string          `json:"backup" yaml:"backup"`
	StagesDone  []string        `json:"stagesDone" yaml:"stagesDone"`
	Skipped     []string        `json:"skipped" yaml:"skipped"`
	Actions     []docAction     `json:"actions" yaml:"actions"`
	Credentials []docCredential `json:"credentials" yaml:"credentials"`
}

type docRunStatus struct {
	DocMeta    `yaml:",inline"`
	StateDir   string      `json:"stateDir" yaml:"stateDir"`
	RunID      string      `json:"runID" yaml:"runID"`
	Status     string      `json:"status" yaml:"status"`
	Open       bool        `json:"open" yaml:"open"`
	Journal    string      `json:"journal" yaml:"journal"`
	StagesDone []string    `json:"stagesDone" yaml:"stagesDone"`
	Actions    []docAction `json:"actions" yaml:"actions"`
	Runs       []struct {
		RunID  string `json:"runID" yaml:"runID"`
		Status string `json:"status" yaml:"status"`
	} `json:"runs" yaml:"runs"`
}

type docBackup struct {
	RunID        string     `json:"runID" yaml:"runID"`
	Dir          string     `json:"dir" yaml:"dir"`
	Complete     bool       `json:"complete" yaml:"complete"`
	Error        string     `json:"error" yaml:"error"`
	Created      *time.Time `json:"created" yaml:"created"`
	Sources      []string   `json:"sources" yaml:"sources"`
	Entries      int        `json:"entries" yaml:"entries"`
	Bytes        int64      `json:"bytes" yaml:"bytes"`
	EtcdSnapshot bool       `json:"etcdSnapshot" yaml:"etcdSnapshot"`
}

type docBackupList struct {
	DocMeta `yaml:",inline"`
	Dir     string      `json:"dir" yaml:"dir"`
	Backups []docBackup `json:"backups" yaml:"backups"`
}

type docRecoveryServerStatus struct {
	DocMeta    `yaml:",inline"`
	Running    bool       `json:"running" yaml:"running"`
	PID        int        `json:"pid" yaml:"pid"`
	Port       int        `json:"port" yaml:"port"`
	URL        string     `json:"url" yaml:"url"`
	Expires    *time.Time `json:"expires" yaml:"expires"`
	Kubeconfig string     `json:"kubeconfig" yaml:"kubeconfig"`
}

type docClusterPlan struct {
	DocMeta   `yaml:",inline"`
	Inventory string `json:"inventory" yaml:"inventory"`
	Workers   string `json:"workers" yaml:"workers"`
	Phases    []struct {
		Name        string   `json:"name" yaml:"name"`
		Description string   `json:"description" yaml:"description"`
		Nodes       []string `json:"nodes" yaml:"nodes"`
	} `json:"phases" yaml:"phases"`
}

type docClusterAction struct {
	Action   string     `json:"action" yaml:"action"`
	Phase    string     `json:"phase" yaml:"phase"`
	Node     string     `json:"node" yaml:"node"`
	State    string     `json:"state" yaml:"state"`
	Started  time.Time  `json:"started" yaml:"started"`
	Finished *time.Time `json:"finished" yaml:"finished"`
	Duration string     `json:"duration" yaml:"duration"`
	Error    string     `json:"error" yaml:"error"`
}

type docClusterRunStatus struct {
	DocMeta   `yaml:",inline"`
	StateDir  string             `json:"stateDir" yaml:"stateDir"`
	RunID     string             `json:"runID" yaml:"runID"`
	Status    string             `json:"status" yaml:"status"`
	Open      bool               `json:"open" yaml:"open"`
	Journal   string             `json:"journal" yaml:"journal"`
	Inventory string             `json:"inventory" yaml:"inventory"`
	Workers   string             `json:"workers" yaml:"workers"`
	Actions   []docClusterAction `json:"actions" yaml:"actions"`
}

type docKubeconfigExport struct {
	DocMeta          `yaml:",inline"`
	Path             string    `json:"path" yaml:"path"`
	User             string    `json:"user" yaml:"user"`
	Groups           []string  `json:"groups" yaml:"groups"`
	GroupsFrom       string    `json:"groupsFrom" yaml:"groupsFrom"`
	NotBefore        time.Time `json:"notBefore" yaml:"notBefore"`
	NotAfter         time.Time `json:"notAfter" yaml:"notAfter"`
	CappedAtCAExpiry bool      `json:"cappedAtCAExpiry" yaml:"cappedAtCAExpiry"`
	Serial           string    `json:"serial" yaml:"serial"`
	Server           string    `json:"server" yaml:"server"`
	SignedBy         string    `json:"signedBy" yaml:"signedBy"`
	Secret           struct {
		Action          string `json:"action" yaml:"action"`
		Namespace       string `json:"namespace" yaml:"namespace"`
		Name            string `json:"name" yaml:"name"`
		Command         string `json:"command" yaml:"command"`
		AdminKubeconfig string `json:"adminKubeconfig" yaml:"adminKubeconfig"`
		ResourceVersion string `json:"resourceVersion" yaml:"resourceVersion"`
	} `json:"secret" yaml:"secret"`
}

// decodeDoc decodes one document strictly: unknown fields and anything
// after the document are errors. It also checks the head and that every
// key written is documented for the kind in docs/schema.md.
func decodeDoc(t *testing.T, format, out, kind string, v any) {
	t.Helper()
	var generic any
	switch format {
	case "json":
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Fatalf("%s %s: strict decoding: %v\n%s", kind, format, err, out)
		}
		if _, err := dec.Token(); err != io.EOF {
			t.Fatalf("%s %s: more than one document on stdout (%v):\n%s", kind, format, err, out)
		}
		if err := json.Unmarshal([]byte(out), &generic); err != nil {
			t.Fatal(err)
		}
	case "yaml":
		dec := yaml.NewDecoder(strings.NewReader(out))
		dec.KnownFields(true)
		if err := dec.Decode(v); err != nil {
			t.Fatalf("%s %s: strict decoding: %v\n%s", kind, format, err, out)
		}
		var extra any
		if err := dec.Decode(&extra); err != io.EOF {
			t.Fatalf("%s %s: more than one document on stdout (%v):\n%s", kind, format, err, out)
		}
		if err := yaml.Unmarshal([]byte(out), &generic); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("format %q", format)
	}
	top, _ := generic.(map[string]any)
	if top["apiVersion"] != "kubecpr.io/v1alpha1" || top["kind"] != kind {
		t.Fatalf("head: apiVersion %v kind %v, want kubecpr.io/v1alpha1 %s", top["apiVersion"], top["kind"], kind)
	}
	schema := readSchema(t)
	var walk func(path string, v any, fields map[string]string)
	walk = func(path string, v any, fields map[string]string) {
		switch x := v.(type) {
		case map[string]any:
			for k, sub := range x {
				typ, ok := fields[k]
				if !ok {
					t.Errorf("%s: field %s%s is written but not documented in docs/schema.md", kind, path, k)
					continue
				}
				// An object documented by a table of its own is checked
				// against it; others ("object", a map) are described in
				// words.
				if inner, ok := schema.types[typ]; ok {
					walk(path+k+".", sub, inner)
				} else if _, isMap := sub.(map[string]any); isMap && typ != "object" {
					t.Errorf("%s: %s%s is an object, documented as %q with no table", kind, path, k, typ)
				}
			}
		case []any:
			for _, sub := range x {
				walk(path, sub, fields)
			}
		}
	}
	top0, ok := schema.kinds[kind]
	if !ok {
		t.Fatalf("docs/schema.md has no section for kind %s", kind)
	}
	walk("", generic, top0)
	for _, secret := range []string{"PRIVATE KEY", "client-key-data", "client-certificate-data"} {
		if strings.Contains(out, secret) {
			t.Errorf("%s %s: %q in the output", kind, format, secret)
		}
	}
}

// docSchema is what docs/schema.md documents: for each kind (a
// "## ... — `kind: K`" heading) the fields of its first table, and for each
// type with a table of its own ("Credential (also in RunReport):") its
// fields; a field maps to the type in its second column.
type docSchema struct {
	kinds map[string]map[string]string
	types map[string]map[string]string
}

func readSchema(t *testing.T) docSchema {
	t.Helper()
	b, err := os.ReadFile("../../docs/schema.md")
	if err != nil {
		t.Fatal(err)
	}
	heading := regexp.MustCompile("^## .*`kind: ([A-Za-z]+)`")
	typeLine := regexp.MustCompile(`^([A-Z][A-Za-z]+)( \(.*\))?:$`)
	name := regexp.MustCompile("`([A-Za-z0-9]+)(\\[\\])?`")
	s := docSchema{kinds: map[string]map[string]string{}, types: map[string]map[string]string{}}
	var cur map[string]string
	inTable := false
	for _, line := range strings.Split(string(b), "\n") {
		switch m, tm := heading.FindStringSubmatch(line), typeLine.FindStringSubmatch(line); {
		case m != nil:
			cur = map[string]string{}
			s.kinds[m[1]] = cur
			continue
		case strings.HasPrefix(line, "## "):
			cur = nil
			continue
		case tm != nil && tm[1] != "Example":
			cur = map[string]string{}
			s.types[tm[1]] = cur
			continue
		}
		if !strings.HasPrefix(line, "|") {
			if inTable {
				cur, inTable = nil, false // a kind's first table only; a type's one table
			}
			continue
		}
		inTable = true
		cols := strings.Split(line, "|")
		if cur == nil || len(cols) < 4 || !strings.HasPrefix(strings.TrimSpace(cols[1]), "`") {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cols[1], -1) {
			cur[m[1]] = strings.TrimSpace(cols[2])
		}
	}
	for _, k := range []string{"CheckReport", "Plan", "RunReport", "RunStatus", "BackupList", "RecoveryServerStatus",
		"ClusterPlan", "ClusterRunStatus", "KubeconfigExport"} {
		if len(s.kinds[k]) == 0 {
			t.Fatalf("docs/schema.md documents no fields for kind %s", k)
		}
	}
	for _, typ := range []string{"Cert", "Stage", "Action", "Credential", "ActionStatus", "RunEntry", "Backup",
		"ClusterPhase", "ClusterAction", "AdminClusterSecret"} {
		if len(s.types[typ]) == 0 {
			t.Fatalf("docs/schema.md has no table for type %s", typ)
		}
	}
	return s
}

// certOnDisk reads the certificate the node has at nodePath.
func certOnDisk(t *testing.T, root, nodePath string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, nodePath))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", nodePath)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func credentialsByName(cs []docCredential) map[string]docCredential {
	m := map[string]docCredential{}
	for _, c := range cs {
		m[c.Name] = c
	}
	return m
}

func actionStates(as []docAction) map[string]string {
	m := map[string]string{}
	for _, a := range as {
		m[a.Action] = a.State
	}
	return m
}

// One recovery of a fixture node, told in json and then in yaml, with -o
// typed in every position: before the command, after it, after another
// flag's value, as --output=.
func TestOutputDocumentsOfARecovery(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			root := expiredNode(t)
			leafEnd, caEnd := now.AddDate(0, 0, -3), now.AddDate(8, 0, 0)
			before := snapshot(t, root)

			// plan: what the fixture has, what would be done; nothing changed.
			r := kubecpr(t, nil, rootArgs(root, "-o", format, "plan")...)
			if r.code != 0 {
				t.Fatalf("plan: exit %d\n%s", r.code, r.stderr)
			}
			var plan docPlan
			decodeDoc(t, format, r.stdout, "Plan", &plan)
			if d := diffSnapshots(before, snapshot(t, root)); d != "" {
				t.Fatalf("plan -o %s changed the node:\n%s", format, d)
			}
			if plan.Root != root || !plan.Now.Equal(now) {
				t.Errorf("plan: root %q now %s, want %q %s", plan.Root, plan.Now, root, now)
			}
			var stages, wantStages []string
			paths := map[string][]string{}
			for _, s := range plan.Stages {
				stages = append(stages, s.Name)
				if s.Description == "" {
					t.Errorf("plan: stage %s has no description", s.Name)
				}
				for _, a := range s.Actions {
					paths[a.ID] = a.Paths
					if a.Summary == "" {
						t.Errorf("plan: action %s has no summary", a.ID)
					}
				}
			}
			for _, s := range phases.All() {
				wantStages = append(wantStages, s.Name)
			}
			if d := cmp.Diff(wantStages, stages); d != "" {
				t.Errorf("plan stages (-want +got):\n%s", d)
			}
			if d := cmp.Diff([]string{"/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/apiserver.key"}, paths["certs/apiserver"]); d != "" {
				t.Errorf("plan: certs/apiserver paths (-want +got):\n%s", d)
			}
			if _, ok := paths["kubeconfigs/admin.conf"]; !ok {
				t.Errorf("plan: no kubeconfigs/admin.conf action: %v", paths)
			}
			creds := credentialsByName(plan.Credentials)
			for name, want := range map[string]docCredential{
				"apiserver":      {Kind: "certificate", Path: "/etc/kubernetes/pki/apiserver.crt", Status: "expired", Expires: &leafEnd},
				"admin.conf":     {Kind: "kubeconfig", Path: "/etc/kubernetes/admin.conf", Status: "expired", Expires: &leafEnd},
				"etcd-server":    {Kind: "certificate", Path: "/etc/kubernetes/pki/etcd/server.crt", Status: "expired", Expires: &leafEnd},
				"ca":             {Kind: "certificate-authority", Path: "/etc/kubernetes/pki/ca.crt", Status: "ok", Expires: &caEnd},
				"front-proxy-ca": {Kind: "certificate-authority", Path: "/etc/kubernetes/pki/front-proxy-ca.crt", Status: "ok", Expires: &caEnd},
			} {
				want.Name = name
				if d := cmp.Diff(want, creds[name]); d != "" {
					t.Errorf("plan: credential %s (-want +got):\n%s", name, d)
				}
			}
			if c := certOnDisk(t, root, "/etc/kubernetes/pki/apiserver.crt"); !c.NotAfter.Equal(leafEnd) {
				t.Fatalf("fixture: apiserver.crt expires %s, want %s", c.NotAfter, leafEnd)
			}

			// run up to certs: -o after the command and another flag's value.
			r = kubecpr(t, nil, rootArgs(root, "run", "--until", "certs", "--update-user-kubeconfigs", "-o", format)...)
			if r.code != 0 {
				t.Fatalf("run --until certs: exit %d\n%s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, "[3/3] certs") {
				t.Errorf("run: progress is not on stderr:\n%s", r.stderr)
			}
			var run docRunReport
			decodeDoc(t, format, r.stdout, "RunReport", &run)
			ents, err := os.ReadDir(filepath.Join(root, "var/lib/kubecpr/backups"))
			if err != nil || len(ents) != 1 {
				t.Fatalf("backups: %v %v", ents, err)
			}
			id := ents[0].Name()
			stateDir := filepath.Join(root, "var/lib/kubecpr")
			renewedEnd := now.Add(365 * 24 * time.Hour)
			if run.RunID != id || run.Result != "open" || run.Continued || run.NextStage != "kubeconfigs" ||
				run.Root != root || !run.Now.Equal(now) ||
				run.Journal != filepath.Join(stateDir, "runs", id, "journal.log") || run.Backup != filepath.Join(stateDir, "backups", id) {
				t.Errorf("run: %+v\nwant run %s open, next kubeconfigs, journal and backup under %s", run, id, stateDir)
			}
			if _, err := os.Stat(run.Journal); err != nil {
				t.Errorf("run: journal: %v", err)
			}
			if d := cmp.Diff([]string{"diagnose", "backup", "certs"}, run.StagesDone); d != "" {
				t.Errorf("run: stagesDone (-want +got):\n%s", d)
			}
			if st := actionStates(run.Actions); st["backup/node"] != "done" || st["certs/apiserver"] != "done" || st["certs/etcd-peer"] != "done" {
				t.Errorf("run: actions %v", st)
			}
			for _, a := range run.Actions {
				if a.Finished == nil || a.Finished.Before(a.Started) || a.Duration == "" {
					t.Errorf("run: action %s: started %s finished %v duration %q", a.Action, a.Started, a.Finished, a.Duration)
				}
			}
			creds = credentialsByName(run.Credentials)
			if c := creds["apiserver"]; c.Status != "ok" || c.Expires == nil || !c.Expires.Equal(renewedEnd) {
				t.Errorf("run: apiserver after the run %+v, want ok until %s", c, renewedEnd)
			}
			if c := certOnDisk(t, root, "/etc/kubernetes/pki/apiserver.crt"); !c.NotAfter.Equal(renewedEnd) {
				t.Errorf("apiserver.crt on disk expires %s, the report said %s", c.NotAfter, renewedEnd)
			}
			if c := creds["admin.conf"]; c.Status != "expired" || !c.Expires.Equal(leafEnd) {
				t.Errorf("run: admin.conf before the kubeconfigs stage %+v, want expired on %s", c, leafEnd)
			}

			// status, with -o after the command as --output=.
			r = kubecpr(t, nil, rootArgs(root, "status", "--output="+format)...)
			var st docRunStatus
			decodeDoc(t, format, r.stdout, "RunStatus", &st)
			if st.RunID != id || st.Status != "open" || !st.Open || st.StateDir != stateDir || st.Journal != run.Journal ||
				len(st.Runs) != 1 || st.Runs[0].RunID != id || st.Runs[0].Status != "open" {
				t.Errorf("status of the open run: %+v", st)
			}
			if d := cmp.Diff(run.Actions, st.Actions); d != "" {
				t.Errorf("status actions differ from the run's report (-run +status):\n%s", d)
			}

			// the rest of the run continues it; bounce and csr are left to the live node.
			r = kubecpr(t, nil, rootArgs(root, "run", "--update-user-kubeconfigs", "-o", format)...)
			if r.code != 0 {
				t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
			}
			run = docRunReport{}
			decodeDoc(t, format, r.stdout, "RunReport", &run)
			if run.RunID != id || run.Result != "finished-on-copy" || !run.Continued || run.NextStage != "" || len(run.Skipped) != 2 ||
				!strings.HasPrefix(run.Skipped[0], "bounce: ") || !strings.HasPrefix(run.Skipped[1], "csr: ") {
				t.Errorf("second run: %+v", run)
			}
			if d := cmp.Diff(wantStages, run.StagesDone); d != "" {
				t.Errorf("run: stagesDone (-want +got):\n%s", d)
			}
			for _, c := range run.Credentials {
				if c.Status != "ok" {
					t.Errorf("after the run: %s is %s", c.Name, c.Status)
				}
			}
			if c := credentialsByName(run.Credentials)["admin.conf"]; c.Expires == nil || !c.Expires.Equal(renewedEnd) {
				t.Errorf("after the run: admin.conf %+v, want until %s", c, renewedEnd)
			}

			r = kubecpr(t, nil, rootArgs(root, "status", "-o", format)...)
			st = docRunStatus{}
			decodeDoc(t, format, r.stdout, "RunStatus", &st)
			if st.RunID != id || st.Status != "complete" || st.Open || len(st.Runs) != 1 || st.Runs[0].Status != "complete" {
				t.Errorf("status of the complete run: %+v", st)
			}

			// backup list, with a backup whose manifest was never written.
			if err := os.MkdirAll(filepath.Join(stateDir, "backups", "zz-unfinished"), 0o700); err != nil {
				t.Fatal(err)
			}
			r = kubecpr(t, nil, rootArgs(root, "backup", "list", "-o", format)...)
			var bl docBackupList
			decodeDoc(t, format, r.stdout, "BackupList", &bl)
			m, err := backup.Load(filepath.Join(stateDir, "backups", id))
			if err != nil {
				t.Fatal(err)
			}
			var size int64
			for _, e := range m.Entries {
				size += e.Size
			}
			if bl.Dir != filepath.Join(stateDir, "backups") || len(bl.Backups) != 2 {
				t.Fatalf("backup list: %+v", bl)
			}
			b := bl.Backups[0]
			if b.RunID != id || b.Dir != run.Backup || !b.Complete || b.Error != "" || b.Created == nil || !b.Created.Equal(now) ||
				b.Entries != len(m.Entries) || b.Entries == 0 || b.Bytes != size || b.EtcdSnapshot ||
				!cmp.Equal(b.Sources, m.Sources) || !slices.Contains(b.Sources, "/etc/kubernetes") {
				t.Errorf("backup list: %+v\nmanifest: %d entries, %d bytes, sources %v", b, len(m.Entries), size, m.Sources)
			}
			if b := bl.Backups[1]; b.RunID != "zz-unfinished" || b.Complete || b.Error == "" || b.Created != nil {
				t.Errorf("backup list: an unfinished backup: %+v", b)
			}

			// recovery-server status when none runs.
			r = kubecpr(t, nil, rootArgs(root, "-o", format, "recovery-server", "status")...)
			var rs docRecoveryServerStatus
			decodeDoc(t, format, r.stdout, "RecoveryServerStatus", &rs)
			if rs.Running || rs.PID != 0 || rs.Expires != nil || rs.Kubeconfig != "" {
				t.Errorf("recovery-server status with none: %+v", rs)
			}
		})
	}
}

// -o in every position gives the same document; an unknown format, or a
// document asked of a command that writes none, is a usage error (exit 3)
// before anything is done, with nothing on stdout.
func TestOutputFlagPositionsAndErrors(t *testing.T) {
	root := expiredNode(t)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "certs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	var ref docRunStatus
	r := kubecpr(t, nil, rootArgs(root, "-o", "json", "status")...)
	decodeDoc(t, "json", r.stdout, "RunStatus", &ref)
	for _, args := range [][]string{
		{"status", "-o", "json"},
		{"status", "--output", "json"},
		{"status", "-o=json"},
		{"--output=json", "status"},
	} {
		r := kubecpr(t, nil, rootArgs(root, args...)...)
		var st docRunStatus
		decodeDoc(t, "json", r.stdout, "RunStatus", &st)
		if d := cmp.Diff(ref, st); d != "" {
			t.Errorf("%v (-before the command +here):\n%s", args, d)
		}
	}
	// text is the default; "table", its old name, is still accepted.
	text := kubecpr(t, nil, rootArgs(root, "status")...)
	for _, f := range []string{"text", "table"} {
		if r := kubecpr(t, nil, rootArgs(root, "status", "-o", f)...); r.code != 0 || r.stdout != text.stdout || !strings.Contains(r.stdout, "ACTION") {
			t.Errorf("-o %s: exit %d\n%s\nwant the default text:\n%s", f, r.code, r.stdout, text.stdout)
		}
	}
	before := snapshot(t, root)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "xml", "status"}, `-o "xml": want text, json or yaml`},
		{[]string{"status", "-o", "JSON"}, `-o "JSON": want text, json or yaml`},
		{[]string{"run", "-o", "yml"}, `-o "yml": want text, json or yaml`},
		{[]string{"rollback", "-o", "json"}, "`kubecpr rollback` writes no json document"},
		// after an argument: a flag, so refused, not taken for a second argument
		{[]string{"backup", "verify", ref.RunID, "-o", "yaml"}, "`kubecpr backup verify` writes no yaml document"},
	} {
		r := kubecpr(t, nil, rootArgs(root, tc.args...)...)
		if r.code != ExitFailed || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d and %q", tc.args, r.code, r.stdout, r.stderr, ExitFailed, tc.want)
		}
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("a refused command changed the node:\n%s", d)
	}
}

// check's document keeps its shape (the cluster driver reads it): it
// decodes strictly, in json and yaml, as docs/schema.md describes it, and
// in json into the CheckReport type itself.
func TestCheckOutputCompatible(t *testing.T) {
	root := expiredNode(t)
	leafEnd, caEnd := now.AddDate(0, 0, -3), now.AddDate(8, 0, 0)
	for _, format := range []string{"json", "yaml"} {
		r := kubecpr(t, nil, rootArgs(root, "check", "-o", format)...)
		if r.code != ExitExpired {
			t.Fatalf("check -o %s: exit %d\n%s", format, r.code, r.stderr)
		}
		var rep docCheckReport
		decodeDoc(t, format, r.stdout, "CheckReport", &rep)
		var names []string
		for _, c := range rep.Certs {
			names = append(names, c.Name)
			if c.Name == "apiserver" && (c.Expires == nil || !c.Expires.Equal(leafEnd) || c.Status != "expired" || c.ResidualSeconds != -3*24*3600 ||
				c.Path != "/etc/kubernetes/pki/apiserver.crt" || c.CA != "ca") {
				t.Errorf("check -o %s: apiserver %+v, want expired on %s", format, c, leafEnd)
			}
		}
		if len(rep.CAs) != 3 || rep.CAs[0].Name != "ca" || !rep.CAs[0].Expires.Equal(caEnd) {
			t.Errorf("check -o %s: CAs %+v, want ca, etcd-ca, front-proxy-ca until %s", format, rep.CAs, caEnd)
		}
		if !sort.StringsAreSorted(names) || len(names) < 14 || rep.ExitCode != ExitExpired || rep.Worst != "expired" ||
			rep.Root != root || !rep.Now.Equal(now) || rep.Cluster["nodeName"] != "cp-1" {
			t.Errorf("check -o %s: %v exit %d worst %s root %s cluster %v", format, names, rep.ExitCode, rep.Worst, rep.Root, rep.Cluster)
		}
		if format == "json" {
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			dec.DisallowUnknownFields()
			var typed inventory.Report
			if err := dec.Decode(&typed); err != nil || len(typed.Certs) != len(rep.Certs) {
				t.Errorf("check -o json into inventory.Report: %v", err)
			}
		}
	}
}

// recovery-server status of a real recovery API server (kube-apiserver on
// a kubeadm node's etcd): the document names the running process, its
// port, and the expiry of the credentials in its kubeconfig, which it
// names without reading out; the server answers with them.
func TestRecoveryServerStatusDocument(t *testing.T) {
	t.Parallel() // processes and trees of its own
	n := cluster.Kubeadm(t, cluster.Options{})
	etcd := n.StartEtcd(t)
	defer etcd.Stop()
	stateDir := n.Path("/var/lib/kubecpr")
	start := time.Now()
	r := kubecpr(t, nil, "--root", n.Root, "recovery-server", "start", "--apiserver-binary", filepath.Join(n.Bin, "kube-apiserver"), "--recovery-ttl", "1h")
	if r.code != 0 {
		t.Fatalf("recovery-server start: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	stopped := false
	defer func() {
		if !stopped {
			kubecpr(t, nil, "--root", n.Root, "recovery-server", "stop")
		}
	}()
	b, err := os.ReadFile(filepath.Join(stateDir, "recovery-server", "pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid, port int
	if _, err := fmt.Sscan(string(b), &pid, &port); err != nil {
		t.Fatalf("pid record %q: %v", b, err)
	}
	for _, format := range []string{"json", "yaml"} {
		r := kubecpr(t, nil, "--root", n.Root, "recovery-server", "status", "-o", format)
		if r.code != 0 {
			t.Fatalf("status -o %s: exit %d\n%s", format, r.code, r.stderr)
		}
		var st docRecoveryServerStatus
		decodeDoc(t, format, r.stdout, "RecoveryServerStatus", &st)
		kc := filepath.Join(stateDir, "recovery-server", "kubeconfig")
		if !st.Running || st.PID != pid || st.Port != port || st.URL != fmt.Sprintf("https://127.0.0.1:%d", port) || st.Kubeconfig != kc || st.Expires == nil {
			t.Fatalf("status -o %s: %+v, want pid %d port %d kubeconfig %s", format, st, pid, port, kc)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", st.PID)); err != nil {
			t.Errorf("pid %d is not running: %v", st.PID, err)
		}
		if fi, err := os.Stat(st.Kubeconfig); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("kubeconfig %s: %v %v, want 0600", st.Kubeconfig, fi, err)
		}
		cfg, err := clientcmd.LoadFromFile(st.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		var notAfter time.Time
		for _, ai := range cfg.AuthInfos {
			blk, _ := pem.Decode(ai.ClientCertificateData)
			if blk == nil {
				t.Fatalf("%s: no client certificate", st.Kubeconfig)
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			notAfter = c.NotAfter
		}
		if !st.Expires.Equal(notAfter) || st.Expires.Before(start.Add(time.Hour-time.Minute)) || st.Expires.After(time.Now().Add(time.Hour)) {
			t.Errorf("status -o %s: expires %s; the kubeconfig's client certificate expires %s, started %s with a 1h TTL", format, st.Expires, notAfter, start)
		}
		// The document describes a server that answers, with those credentials.
		rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		if rc.Host != st.URL {
			t.Errorf("kubeconfig server %s, status url %s", rc.Host, st.URL)
		}
		if _, err := kubernetes.NewForConfigOrDie(rc).CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{}); err != nil {
			t.Errorf("the recovery server at %s: %v", st.URL, err)
		}
	}
	if r := kubecpr(t, nil, "--root", n.Root, "recovery-server", "stop"); r.code != 0 {
		t.Fatalf("stop: exit %d\n%s", r.code, r.stderr)
	}
	stopped = true
	r = kubecpr(t, nil, "--root", n.Root, "-o", "json", "recovery-server", "status")
	var st docRecoveryServerStatus
	decodeDoc(t, "json", r.stdout, "RecoveryServerStatus", &st)
	if st.Running || st.PID != 0 || st.Kubeconfig != "" {
		t.Errorf("after stop: %+v", st)
	}
}

// A cluster of one control plane and one worker, recovered on copies from
// one place: cluster plan, cluster status before and after, and the end of
// cluster run are documents of their own kinds (json and yaml), the run's
// document is the journal cluster status reads afterwards, and nothing but
// the document is on stdout.
func TestOutputDocumentsOfAClusterRun(t *testing.T) {
	dir := t.TempDir()
	invFile, roots := expiredClusterOf(t, dir, 1, 1)
	driver := filepath.Join(dir, "driver")
	if err := os.MkdirAll(driver, 0o755); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(driver, "var/lib/kubecpr")
	clock := now.Format(time.RFC3339)

	r := kubecpr(t, nil, "cluster", "plan", "--inventory", invFile, "--ca-from", "cp-1", "--root", driver, "--now", clock, "-o", "yaml")
	if r.code != 0 {
		t.Fatalf("cluster plan: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var plan docClusterPlan
	decodeDoc(t, "yaml", r.stdout, "ClusterPlan", &plan)
	got := map[string][]string{}
	var order []string
	for _, ph := range plan.Phases {
		order = append(order, ph.Name)
		got[ph.Name] = ph.Nodes
		if ph.Description == "" {
			t.Errorf("cluster plan: phase %s has no description", ph.Name)
		}
	}
	if d := cmp.Diff([]string{"offline", "restart", "workers", "verify"}, order); d != "" {
		t.Errorf("cluster plan phases (-want +got):\n%s", d)
	}
	if plan.Inventory != invFile || plan.Workers != "bundle" || !cmp.Equal(got["offline"], []string{"cp-1"}) ||
		!cmp.Equal(got["workers"], []string{"w-1"}) || !cmp.Equal(got["verify"], []string{"cp-1", "w-1"}) {
		t.Errorf("cluster plan: %+v", plan)
	}

	r = kubecpr(t, nil, "cluster", "status", "--root", driver, "-o", "json")
	var none docClusterRunStatus
	decodeDoc(t, "json", r.stdout, "ClusterRunStatus", &none)
	if r.code != 0 || none.RunID != "" || none.Open || none.Actions == nil || len(none.Actions) != 0 || none.StateDir != stateDir {
		t.Errorf("cluster status with no run: exit %d %+v", r.code, none)
	}

	r = kubecpr(t, nil, "cluster", "run", "--inventory", invFile, "--ca-from", "cp-1", "--update-user-kubeconfigs", "--root", driver, "--now", clock, "-o", "json")
	if r.code != 0 {
		t.Fatalf("cluster run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "[w-1] ") || !strings.Contains(r.stderr, "NODE") {
		t.Errorf("cluster run: progress and summary are not on stderr:\n%s", r.stderr)
	}
	var run docClusterRunStatus
	decodeDoc(t, "json", r.stdout, "ClusterRunStatus", &run)
	states := map[string]string{}
	for _, a := range run.Actions {
		states[a.Action] = a.State
		if a.Phase+"/"+a.Node != a.Action || a.Finished == nil || a.Finished.Before(a.Started) || a.Duration == "" || a.Error != "" {
			t.Errorf("cluster run: action %+v", a)
		}
	}
	if d := cmp.Diff(map[string]string{"offline/cp-1": "done", "restart/cp-1": "done", "workers/w-1": "done", "verify/cp-1": "done", "verify/w-1": "done"}, states); d != "" {
		t.Errorf("cluster run actions (-want +got):\n%s", d)
	}
	if run.RunID == "" || run.Status != "complete" || run.Open || run.StateDir != stateDir || run.Inventory != invFile || run.Workers != "bundle" ||
		run.Journal != filepath.Join(stateDir, "cluster", run.RunID, "journal.log") {
		t.Errorf("cluster run: %+v", run)
	}
	if _, err := os.Stat(run.Journal); err != nil {
		t.Errorf("cluster run: journal: %v", err)
	}
	checkClusterRecovered(t, roots)

	r = kubecpr(t, nil, "-o", "yaml", "cluster", "status", "--root", driver)
	var st docClusterRunStatus
	decodeDoc(t, "yaml", r.stdout, "ClusterRunStatus", &st)
	if d := cmp.Diff(run, st); d != "" {
		t.Errorf("cluster status differs from the run's document (-run +status):\n%s", d)
	}
}

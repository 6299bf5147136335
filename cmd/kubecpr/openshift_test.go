package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/phases/openshift"
	"github.com/kubecpr/kubecpr/test/ocpfixture"
)

func ocpTree(t *testing.T, o ocpfixture.Options) string {
	t.Helper()
	root := t.TempDir()
	o.Now = now
	if _, err := ocpfixture.Generate(root, o); err != nil {
		t.Fatal(err)
	}
	return root
}

// check and diagnose on an OpenShift master built from the operators'
// layout, every leaf expired: every credential of the node is listed with
// its expiry, exit 2, the OpenShift message is given exactly once, and
// nothing is written.
func TestOpenShiftCheckAndDiagnoseListTheNode(t *testing.T) {
	root := ocpTree(t, ocpfixture.Options{Master: true, NodeName: "master-0", Revision: 7, KCMRevision: 5, OtherMasters: []string{"master-1"}})
	expired := now.AddDate(0, 0, -3).UTC().Format("Jan 02, 2006 15:04 MST")
	rows := []string{"kubelet-client-current.pem", "kubelet-server-current.pem", "kubelet kubeconfig", "bootstrap kubeconfig",
		"localhost-recovery kubeconfig", "kube-apiserver-pod-7/etcd-client", "kube-apiserver-pod-7/localhost-recovery-serving-certkey",
		"kube-controller-manager-pod-5/serving-cert"}
	for _, s := range ocpfixture.CertSecretNames() {
		rows = append(rows, "kube-apiserver-certs/"+s)
	}
	for _, s := range ocpfixture.KCMCertSecretNames() {
		rows = append(rows, "kube-controller-manager-certs/"+s)
	}
	for _, s := range ocpfixture.EtcdCertNames("master-0") {
		rows = append(rows, "etcd-certs/etcd-all-certs/"+s)
	}
	for _, args := range [][]string{{"check"}, {"diagnose", "--offline"}} {
		t.Run(args[0], func(t *testing.T) {
			before := snapshot(t, root)
			r := kubecpr(t, nil, rootArgs(root, args...)...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s%s", r.code, r.stdout, r.stderr)
			}
			for _, row := range rows {
				line := lineWith(r.stdout, row+" ")
				if row == "bootstrap kubeconfig" {
					continue // its expiry is its CA bundle's, which is valid
				}
				if !strings.Contains(line, expired) || !strings.Contains(line, "expired") {
					t.Errorf("%s: row %q lacks the expiry %s", row, line, expired)
				}
			}
			if n := strings.Count(r.stderr, "this is an OpenShift 4 node"); n != 1 {
				t.Errorf("the OpenShift message is given %d times, want once:\n%s", n, r.stderr)
			}
			for _, s := range []string{"kubecpr does NOT here", "since OpenShift 4.2", "oc get csr", "oc adm certificate approve",
				"kubecpr openshift-node", "localhost-recovery.kubeconfig"} {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
				}
			}
			if args[0] == "diagnose" && (!strings.Contains(r.stdout, "next: kubecpr openshift-node") || strings.Contains(r.stdout, "kubecpr run") ||
				strings.Contains(r.stdout, "external CA mode")) {
				t.Errorf("diagnose sends the operator the kubeadm way:\n%s", r.stdout)
			}
			if strings.Contains(r.stderr, "--config") {
				t.Errorf("sends the operator to --config:\n%s", r.stderr)
			}
			if strings.Contains(r.stdout, "master-1") {
				t.Errorf("another etcd member's certificates are listed:\n%s", r.stdout)
			}
			if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
				t.Errorf("%v changed the node:\n%s", args, diff)
			}
		})
	}
	// The machine-readable report carries the same credentials.
	r := kubecpr(t, nil, rootArgs(root, "-o", "json", "check")...)
	var rep struct {
		Certificates []struct {
			Name    string     `json:"name"`
			Kind    string     `json:"kind"`
			Status  string     `json:"status"`
			Expires *time.Time `json:"expires"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, r.stdout)
	}
	got := map[string]string{}
	for _, c := range rep.Certificates {
		got[c.Name] = c.Kind + " " + c.Status
		if c.Expires == nil {
			t.Errorf("%s has no expiry in json", c.Name)
		}
	}
	for name, want := range map[string]string{"kubelet-server-current.pem": "kubelet-server expired", "kubelet-client-current.pem": "kubelet-client expired",
		"kube-apiserver-certs/kubelet-client": "operator-managed expired", "bootstrap kubeconfig": "bootstrap-kubeconfig ok",
		"kube-controller-manager-certs/csr-signer": "operator-managed expired", "etcd-certs/etcd-all-certs/etcd-peer-master-0": "operator-managed expired"} {
		if got[name] != want {
			t.Errorf("json %s = %q, want %q", name, got[name], want)
		}
	}
}

func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// An OpenShift worker (its /etc/kubernetes/kubelet.conf is a
// KubeletConfiguration, not kubeadm's kubeconfig) is OpenShift, not kubeadm.
func TestOpenShiftWorkerIsNotKubeadm(t *testing.T) {
	root := ocpTree(t, ocpfixture.Options{NodeName: "worker-1"})
	r := kubecpr(t, nil, rootArgs(root, "check")...)
	if r.code != 2 || !strings.Contains(r.stderr, "this is an OpenShift 4 node") || !strings.Contains(r.stdout, "kubelet-client-current.pem") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "localhost-recovery") {
		t.Errorf("a worker lists control-plane credentials:\n%s", r.stdout)
	}
}

// The kubeadm pipeline refuses an OpenShift node before any change, and
// says what to run instead.
func TestOpenShiftRefusesTheKubeadmPipeline(t *testing.T) {
	root := ocpTree(t, ocpfixture.Options{Master: true})
	for _, args := range [][]string{{"run"}, {"plan"}, {"run", "--dry-run"}} {
		before := snapshot(t, root)
		r := kubecpr(t, nil, rootArgs(root, args...)...)
		if r.code != ExitPrecondition || !strings.Contains(r.stderr, "kubecpr openshift-node") || !strings.Contains(r.stderr, "changed nothing") {
			t.Errorf("%v: exit %d\n%s", args, r.code, r.stderr)
		}
		if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
			t.Errorf("%v changed the node:\n%s", args, diff)
		}
		if _, err := os.Stat(filepath.Join(root, "var/lib/kubecpr")); err == nil {
			t.Errorf("%v created kubecpr's state dir", args)
		}
	}
}

// openshift-node --dry-run on a copy: the plan is the node part, nothing
// is written; on a kubeadm node the command refuses.
func TestOpenShiftNodePlan(t *testing.T) {
	root := ocpTree(t, ocpfixture.Options{Master: true, NodeName: "master-2"})
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "openshift-node", "--dry-run")...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, s := range []string{"openshift-kubelet", "restart the kubelet", "kubelet-client-current.pem is expired",
		"node-bootstrapper", "openshift-csr", "not the live node"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("plan lacks %q:\n%s", s, r.stdout)
		}
	}
	if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
		t.Errorf("dry run changed the node:\n%s", diff)
	}

	kroot := expiredNode(t)
	r = kubecpr(t, nil, rootArgs(kroot, "openshift-node", "--dry-run")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "not an OpenShift 4 node") {
		t.Errorf("on kubeadm: exit %d\n%s", r.code, r.stderr)
	}
}

// A run of `kubecpr openshift-node` is a run like any other for the
// generic commands: `status` shows it, `resume` continues it with the
// options it was started with, `rollback` undoes it — the kubelet's
// client certificate link back, and the kubelet restarted again on it.
// The run here sets aside an unusable client certificate (its key does not
// match), restarts the kubelet, and stops in the csr stage: the API server
// it was told to use does not answer.
func TestOpenShiftNodeRunWithStatusResumeRollback(t *testing.T) {
	root := ocpTree(t, ocpfixture.Options{Master: true, NodeName: "master-0",
		Leaf: ocpfixture.Window{NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)}})
	link := filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	dated := filepath.Join(root, filepath.FromSlash(target))
	data, _ := os.ReadFile(dated)
	blk, _ := pem.Decode(data)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(other)
	if err := os.WriteFile(dated, append(pem.EncodeToMemory(blk), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kc := filepath.Join(dir, "nowhere.kubeconfig")
	if err := os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n"+
		"users:\n- name: u\n  user:\n    token: throwaway\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	restarts := filepath.Join(dir, "restarts")
	restart := "echo restarted >> " + restarts
	countRestarts := func() int {
		b, _ := os.ReadFile(restarts)
		return strings.Count(string(b), "restarted")
	}
	before := snapshot(t, root)

	r := kubecpr(t, nil, rootArgs(root, "openshift-node", "--kubelet-restart-command", restart, "--kubeconfig", kc, "--csr-wait", "0")...)
	if r.code != ExitStageFailed || !strings.Contains(r.stderr, "127.0.0.1:1") || !strings.Contains(r.stderr, "`kubecpr resume` continues") {
		t.Fatalf("openshift-node against an API server that does not answer: exit %d, want %d\n%s%s", r.code, ExitStageFailed, r.stdout, r.stderr)
	}
	if got, _ := os.Readlink(link); got != openshift.SetAsideTarget || countRestarts() != 1 {
		t.Fatalf("after the run: link -> %q, %d kubelet restarts; want -> %s and 1", got, countRestarts(), openshift.SetAsideTarget)
	}

	// status: the run, open, where it stopped.
	r = kubecpr(t, nil, rootArgs(root, "status", "-o", "json")...)
	var st docRunStatus
	decodeDoc(t, "json", r.stdout, "RunStatus", &st)
	states := actionStates(st.Actions)
	if !st.Open || st.Status != "open" || states["openshift-kubelet/set-aside"] != "done" || states["openshift-kubelet/restart"] != "done" ||
		states["openshift-csr/approve"] != "failed" {
		t.Fatalf("status of the open openshift-node run: %+v", st)
	}
	id := st.RunID

	// resume, with no options: the same run, its recorded --kubeconfig and
	// restart command, what is done not done again.
	r = kubecpr(t, nil, rootArgs(root, "resume")...)
	if r.code != ExitStageFailed || !strings.Contains(r.stdout+r.stderr, "continuing unfinished run "+id) ||
		!strings.Contains(r.stdout+r.stderr, "(done earlier)") || !strings.Contains(r.stdout+r.stderr, kc) {
		t.Fatalf("resume: exit %d, want %d continuing %s through %s\n%s%s", r.code, ExitStageFailed, id, kc, r.stdout, r.stderr)
	}
	if countRestarts() != 1 {
		t.Errorf("resume restarted the kubelet again (%d restarts): the restart was done", countRestarts())
	}
	// openshift-node again while the run is open: the same run, through
	// another API server given anew (a live option, journaled).
	kc2 := filepath.Join(dir, "elsewhere.kubeconfig")
	b, _ := os.ReadFile(kc)
	if err := os.WriteFile(kc2, []byte(strings.Replace(string(b), "127.0.0.1:1", "127.0.0.1:2", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	r = kubecpr(t, nil, rootArgs(root, "openshift-node", "--kubeconfig", kc2)...)
	if r.code != ExitStageFailed || !strings.Contains(r.stdout+r.stderr, "continuing unfinished run "+id) || !strings.Contains(r.stdout+r.stderr, "127.0.0.1:2") {
		t.Fatalf("openshift-node on the open run with another --kubeconfig: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// The kubeadm pipeline is still refused.
	if r := kubecpr(t, nil, rootArgs(root, "run")...); r.code != ExitPrecondition || !strings.Contains(r.stderr, "kubecpr openshift-node") {
		t.Errorf("run on the OpenShift node: exit %d\n%s", r.code, r.stderr)
	}

	// rollback: the node as it was, the kubelet restarted on it.
	r = kubecpr(t, nil, rootArgs(root, "rollback", "--kubelet-restart-command", restart)...)
	if r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("after rollback the node differs:\n%s", d)
	}
	if countRestarts() != 2 {
		t.Errorf("rollback: %d kubelet restarts in all, want 2 (the run's, then rollback's on the restored link)", countRestarts())
	}
	r = kubecpr(t, nil, rootArgs(root, "status", "-o", "json")...)
	st = docRunStatus{}
	decodeDoc(t, "json", r.stdout, "RunStatus", &st)
	if st.RunID != id || st.Status != "rolled-back" || st.Open {
		t.Errorf("status after rollback: %+v", st)
	}
	if r := kubecpr(t, nil, rootArgs(root, "resume")...); r.code != 0 || !strings.Contains(r.stdout, "nothing to resume") {
		t.Errorf("resume after rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

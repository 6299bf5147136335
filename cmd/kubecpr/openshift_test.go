package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

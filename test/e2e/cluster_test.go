package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecpr/kubecpr/test/cluster"
	"github.com/kubecpr/kubecpr/test/kubecprbin"
	realkubelet "github.com/kubecpr/kubecpr/test/kubelet"
	"github.com/kubecpr/kubecpr/test/treesnap"
)

// credentials is what a node's recovery may change and its rollback must
// restore: /etc/kubernetes, the kubelet's pki and its config.yaml and
// kubeadm-flags.env (not etcd's data, logs, kubecpr's own state, or what
// a running kubelet keeps in /var/lib/kubelet: pods, checkpoints, plugin
// sockets).
func credentials(t *testing.T, n *cluster.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range []string{"etc/kubernetes", "var/lib/kubelet/pki"} {
		if _, err := os.Stat(filepath.Join(n.Root, d)); os.IsNotExist(err) {
			continue
		}
		for k, v := range treesnap.Take(t, filepath.Join(n.Root, d)) {
			out[d+"/"+k] = v
		}
	}
	for _, f := range []string{"var/lib/kubelet/config.yaml", "var/lib/kubelet/kubeadm-flags.env"} {
		b, err := os.ReadFile(filepath.Join(n.Root, f))
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		out[f] = string(b)
	}
	return out
}

// startWorkerKubelets runs the real kubelet of each worker (in a
// containerd of its own) and waits until each has registered its Node and
// renewed its Lease with its valid certificate, read through cp's
// super-admin.conf.
func startWorkerKubelets(t *testing.T, cp *cluster.Node, workers []*cluster.Node) []*realkubelet.Kubelet {
	t.Helper()
	ks := make([]*realkubelet.Kubelet, len(workers))
	for i, w := range workers {
		ks[i] = realkubelet.StartWorker(t, w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i, w := range workers {
		if err := cp.WaitNodeLeaseRenewed(ctx, superAdminConf, w.Name, time.Time{}); err != nil {
			t.Fatalf("%s: the real kubelet did not start up: %v\n%s", w.Name, err, ks[i].LogTail(40))
		}
	}
	return ks
}

const superAdminConf = "/etc/kubernetes/super-admin.conf"

// restartAndWaitCrashLoop restarts each worker's kubelet on its expired
// client certificate (as systemctl restart would) and waits until the new
// kubelet has failed as a real worker's does with no bootstrap kubeconfig
// left: it exits and its supervisor keeps restarting it.
func restartAndWaitCrashLoop(t *testing.T, ks []*realkubelet.Kubelet) {
	t.Helper()
	for _, k := range ks {
		starts := k.Starts()
		if out, err := exec.Command("sh", "-c", k.RestartCommand()).CombinedOutput(); err != nil {
			t.Fatalf("restarting the kubelet of %s: %v %s", k.Node.Name, err, out)
		}
		deadline := time.Now().Add(time.Minute)
		for !(k.Starts() > starts+1 && strings.Contains(k.Log(), "unable to load bootstrap kubeconfig")) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the kubelet on its expired certificate did not fail as a worker's does (starts %d → %d):\n%s", k.Node.Name, starts, k.Starts(), k.LogTail(30))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// The whole-cluster recovery of three control planes with stacked etcd
// and two workers (the production failure on one node, the cluster run,
// its rollback byte for byte) is test/kubeadmbed TestKubeadmBed, on a
// cluster made by real kubeadm init and join.

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
	}
	return strings.Join(q, ", ")
}

// TestClusterWorkersBootstrap: `kubecpr cluster run --workers bootstrap`
// against a real control plane (kubeadm layout, etcd and kube-apiserver in
// real containerd), two expired workers whose real kubelets (each with a
// containerd of its own, started as kubeadm's drop-in starts them) are
// crash-looping: their client certificates expired and kubeadm join
// removed bootstrap-kubelet.conf long ago.
//
// kubecpr writes bootstrap-kubelet.conf with a fresh bootstrap token on
// each worker and restarts its kubelet; the kubelet files its own CSR as
// system:bootstrap:<id>, and kubecpr's approver approves and signs it.
// As soon as worker-1 has the token, the test files a CSR for "intruder"
// (a Node the API knows, not in the inventory) with it, as a leaked token
// would: the approver must refuse it.
//
// Proven: each worker's kubelet renews its Node Lease after the run and its
// kubelet.conf authenticates as system:node:NAME against the real API
// server (SelfSubjectReview); its CSR was filed by system:bootstrap:<id>
// and approved by kubecpr; the intruder's CSR is still pending, without a
// certificate, and the run named it with the reason; the bootstrap
// token's Secret is gone; bootstrap-kubelet.conf is 0600 and the token
// file pushed to the worker is gone; the token's secret is not in
// kubecpr's output or journals.
func TestClusterWorkersBootstrap(t *testing.T) {
	t.Parallel()
	start := time.Now()
	lap := func(what string) { t.Logf("%s at %s", what, time.Since(start).Round(100*time.Millisecond)) }
	cp := cluster.ControlPlanes(t, 1, cluster.Options{})[0]
	workers := []*cluster.Node{
		cluster.Worker(t, cp, "worker-1", "127.0.0.2"),
		cluster.Worker(t, cp, "worker-2", "127.0.0.3"),
	}
	run := cluster.StartControlPlanes(t, []*cluster.Node{cp}, cluster.RunOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := cp.GrantNodeBootstrappers(ctx, t); err != nil {
		t.Fatal(err)
	}
	// "intruder" is a Node the cluster knows (say, one taken out of the
	// inventory) but not a worker of this run: only the inventory check
	// refuses its CSR.
	if _, err := cp.Client(t, cluster.AdminConf).CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubelets := startWorkerKubelets(t, cp, workers)
	lap("cluster up, workers' real kubelets registered")
	cluster.ExpireAll(t, append([]*cluster.Node{cp}, workers...), 48*time.Hour)
	run.RestartAll(t)
	restartAndWaitCrashLoop(t, kubelets)
	lap("expired, restarted, kubelets crash-looping")

	// The intruder: as soon as worker-1's bootstrap-kubelet.conf appears, a
	// CSR for "intruder" is filed with its token. worker-1's restart
	// command waits until then, and 3 s more (the approver passes once a
	// second), so the run cannot end before its approver saw that CSR.
	ack := filepath.Join(t.TempDir(), "intruder-filed")
	intruder := make(chan string, 1)
	go func() {
		defer os.WriteFile(ack, nil, 0o600)
		for ctx.Err() == nil {
			if _, err := os.Stat(workers[0].Path(cluster.BootstrapKubeconfig)); err == nil {
				name, err := workers[0].FileNodeCSR(ctx, cluster.BootstrapKubeconfig, "intruder")
				if err != nil {
					t.Errorf("filing the intruder's CSR with worker-1's bootstrap token: %v", err)
				}
				intruder <- name
				time.Sleep(3 * time.Second)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	restartCmd := []string{
		fmt.Sprintf("i=0; while [ ! -e %s ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; %s", ack, kubelets[0].RestartCommand()),
		kubelets[1].RestartCommand(),
	}

	dir := t.TempDir()
	rn := run.Node(cp)
	var inv strings.Builder
	inv.WriteString("apiVersion: kubecpr.io/v1alpha1\nkind: Inventory\nnodes:\n")
	fmt.Fprintf(&inv, "  - name: %s\n    role: control-plane\n    address: %s\n    root: %s\n    args: [%s]\n",
		cp.Name, cp.Address, cp.Root, quoteArgs([]string{"--cri-socket", rn.Socket, "--kubelet-restart-command", rn.KubeletRestartCommand}))
	for i, w := range workers {
		fmt.Fprintf(&inv, "  - name: %s\n    role: worker\n    root: %s\n    args: [%s]\n", w.Name, w.Root,
			quoteArgs([]string{"--kubelet-restart-command", restartCmd[i], "--cri-socket", kubelets[i].D.Socket}))
	}
	invFile := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(invFile, []byte(inv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	driver := filepath.Join(dir, "driver")
	if err := os.MkdirAll(driver, 0o755); err != nil {
		t.Fatal(err)
	}
	res := kubecprbin.Run(t, nil, "--root", driver, "cluster", "run", "--inventory", invFile, "--ca-from", cp.Name,
		"--workers", "bootstrap", "--component-timeout", "5m")
	runEnd := time.Now()
	lap("cluster run")
	if res.Code != 0 {
		t.Fatalf("kubecpr cluster run --workers bootstrap: exit %d\n%s%s\n%s\nworker-1's kubelet:\n%s", res.Code, res.Stdout, res.Stderr, run.Diagnostics(), kubelets[0].LogTail(40))
	}
	if i := strings.Index(res.Stdout, "NODE "); i >= 0 {
		t.Logf("kubecpr cluster run summary:\n%s", res.Stdout[i:])
	}

	admin := cp.Client(t, cluster.AdminConf)
	all, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tokenID := ""
	for i, w := range workers {
		user, err := w.WhoAmI(ctx, cluster.KubeletConf)
		if err != nil || user != "system:node:"+w.Name {
			t.Errorf("%s: kubelet.conf (as the kubelet rewrote it) authenticates as %q (%v), want system:node:%s", w.Name, user, err, w.Name)
		}
		if err := cp.WaitNodeLeaseRenewed(ctx, superAdminConf, w.Name, runEnd); err != nil {
			t.Errorf("%s: %v\n%s", w.Name, err, kubelets[i].LogTail(30))
		}
		// The kubelet's own CSR: filed with the bootstrap token, approved
		// and signed by kubecpr.
		var c *certificatesv1.CertificateSigningRequest
		for k := range all.Items {
			if csrCommonName(t, &all.Items[k]) == "system:node:"+w.Name && strings.HasPrefix(all.Items[k].Spec.Username, "system:bootstrap:") {
				c = &all.Items[k]
			}
		}
		if c == nil {
			t.Errorf("%s: no client CSR filed by the kubelet with a bootstrap token\n%s", w.Name, kubelets[i].LogTail(30))
			continue
		}
		id, _ := strings.CutPrefix(c.Spec.Username, "system:bootstrap:")
		if len(c.Status.Certificate) == 0 || !approvedBy(c, "KubecprApproved") {
			t.Errorf("%s: CSR %s by %q, approved by kubecpr %v, certificate %d bytes", w.Name, c.Name, c.Spec.Username, approvedBy(c, "KubecprApproved"), len(c.Status.Certificate))
		}
		if tokenID != "" && id != tokenID {
			t.Errorf("workers used different tokens: %s and %s", tokenID, id)
		}
		tokenID = id
		if st, err := os.Stat(w.Path(cluster.BootstrapKubeconfig)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %s: %v %v, want a 0600 file", w.Name, cluster.BootstrapKubeconfig, st, err)
		}
		if _, err := os.Stat(w.Path("/var/lib/kubecpr/incoming/bootstrap-token")); !os.IsNotExist(err) {
			t.Errorf("%s: the pushed token file is still there (%v)", w.Name, err)
		}
	}
	// The intruder's CSR: refused, reported, left pending.
	var intruderCSR string
	select {
	case intruderCSR = <-intruder:
	default:
		t.Fatal("no intruder CSR was filed: worker-1's bootstrap-kubelet.conf never appeared")
	}
	c, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, intruderCSR, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Status.Conditions) != 0 || len(c.Status.Certificate) != 0 {
		t.Errorf("the intruder's CSR %s was decided: %+v, certificate %d bytes", c.Name, c.Status.Conditions, len(c.Status.Certificate))
	}
	if !strings.Contains(res.Stdout, "refused "+c.Name) || !strings.Contains(res.Stdout, `node "intruder" is not one of the nodes`) {
		t.Errorf("the run does not report the intruder's CSR %s refused:\n%s", c.Name, res.Stdout)
	}
	// The token is gone from the API, and its secret from every output.
	secrets, err := admin.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{FieldSelector: "type=bootstrap.kubernetes.io/token"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		t.Errorf("bootstrap token Secret %s left in kube-system", s.Name)
	}
	bc, err := workers[0].RESTConfig(cluster.BootstrapKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	id, secret, _ := strings.Cut(bc.BearerToken, ".")
	if id != tokenID || len(secret) != 16 {
		t.Fatalf("bootstrap-kubelet.conf holds token %s.<%d characters>, want %s.<16>", id, len(secret), tokenID)
	}
	if strings.Contains(res.Stdout+res.Stderr, secret) {
		t.Error("the bootstrap token's secret is in kubecpr's output")
	}
	for _, root := range []string{driver, workers[0].Root, workers[1].Root} {
		_ = filepath.WalkDir(filepath.Join(root, "var/lib/kubecpr"), func(p string, de os.DirEntry, err error) error {
			if err != nil || de.IsDir() || !strings.HasSuffix(p, ".log") {
				return nil
			}
			if b, _ := os.ReadFile(p); strings.Contains(string(b), secret) {
				t.Errorf("%s holds the bootstrap token's secret", p)
			}
			return nil
		})
	}
	lap("proven")
}

// csrCommonName is the subject CN of the CSR's request.
func csrCommonName(t *testing.T, c *certificatesv1.CertificateSigningRequest) string {
	t.Helper()
	blk, _ := pem.Decode(c.Spec.Request)
	if blk == nil {
		t.Fatalf("CSR %s: no PEM request", c.Name)
	}
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		t.Fatalf("CSR %s: %v", c.Name, err)
	}
	return req.Subject.CommonName
}

func approvedBy(c *certificatesv1.CertificateSigningRequest, reason string) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == certificatesv1.CertificateApproved && cond.Reason == reason {
			return true
		}
	}
	return false
}

package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/pki"
	"github.com/kubecpr/kubecpr/test/cluster"
)

// BenchmarkApproveAndSign1000NodeCSRs: 1,000 pending kubelet client CSRs
// (filed with a bootstrap token) approved and signed by kubecpr's approver
// through a real kube-apiserver, with the client the csr stage uses
// (csr.TuneClient) and its default number of writes in flight. Filing
// them is outside the timer.
//
// Besides the time it reports where the time goes, per 1,000 CSRs: CPU
// used by kube-apiserver, etcd and the approver (this process), and etcd's
// WAL fsyncs and backend commits (count and total time, from its metrics).
// KUBECPR_BENCH_CSR_WORKERS=N sets Approver.Workers (1 = one write at a
// time, as before the pool); KUBECPR_BENCH_PPROF_DIR=DIR saves a CPU
// profile of kube-apiserver taken during each pass (apiserver-N.pprof;
// read it with go tool pprof and $KUBECPR_TESTBIN_DIR/kube-apiserver).
func BenchmarkApproveAndSign1000NodeCSRs(b *testing.B) {
	ctx := context.Background()
	e := startCSRBench(ctx, b)
	workers, _ := strconv.Atoi(os.Getenv("KUBECPR_BENCH_CSR_WORKERS"))
	e.run(ctx, b, func(int) func() error {
		return func() error {
			a := &csr.Approver{Client: e.approver, CA: e.ca, Sign: csr.SignAlways, Workers: workers,
				Policy: csr.Policy{Nodes: map[string]csr.Node{e.n.Name: {Name: e.n.Name}}}}
			res, err := a.Pass(ctx)
			if err != nil {
				return err
			}
			if len(res.Approved) != csrBenchCount || len(res.Signed) != csrBenchCount {
				return fmt.Errorf("approved %d, signed %d, want %d", len(res.Approved), len(res.Signed), csrBenchCount)
			}
			return nil
		}
	})
}

// BenchmarkAPIServerFloor1000CSRs is the API server's and etcd's share of
// BenchmarkApproveAndSign1000NodeCSRs alone: the same 1,000 CSRs, listed
// and their certificates signed before the timer starts, then only the
// 2,000 writes (each CSR's approval, then its certificate written on the
// object the approval returned), KUBECPR_BENCH_CSR_WORKERS in flight
// (default csr.DefaultWorkers). No approver could be faster through this
// API server: what kubecpr adds on top of it is its own CPU (the policy,
// the signatures) and how well it keeps the server busy.
func BenchmarkAPIServerFloor1000CSRs(b *testing.B) {
	ctx := context.Background()
	e := startCSRBench(ctx, b)
	workers, _ := strconv.Atoi(os.Getenv("KUBECPR_BENCH_CSR_WORKERS"))
	if workers <= 0 {
		workers = csr.DefaultWorkers
	}
	client := e.admin.CertificatesV1().CertificateSigningRequests()
	e.run(ctx, b, func(int) func() error {
		list, err := client.List(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		certs := make([][]byte, len(list.Items))
		now := time.Now()
		for i := range list.Items {
			if certs[i], err = csr.Sign(e.ca, &list.Items[i], now, 0); err != nil {
				b.Fatal(err)
			}
		}
		return func() error {
			var mu sync.Mutex
			var errs []error
			var wg sync.WaitGroup
			jobs := make(chan int)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range jobs {
						c := list.Items[i].DeepCopy()
						c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
							Type: certificatesv1.CertificateApproved, Status: "True", Reason: "KubecprApproved", Message: "floor", LastUpdateTime: metav1.Now()})
						u, err := client.UpdateApproval(ctx, c.Name, c, metav1.UpdateOptions{})
						if err == nil {
							u.Status.Certificate = certs[i]
							_, err = client.UpdateStatus(ctx, u, metav1.UpdateOptions{})
						}
						if err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
						}
					}
				}()
			}
			for i := range list.Items {
				jobs <- i
			}
			close(jobs)
			wg.Wait()
			if len(list.Items) != csrBenchCount {
				errs = append(errs, fmt.Errorf("%d CSRs listed, want %d", len(list.Items), csrBenchCount))
			}
			return errors.Join(errs...)
		}
	})
}

const csrBenchCount = 1000

// csrBench is one real etcd and kube-apiserver laid out by kubeadm, with a
// bootstrap token to file kubelet CSRs and an admin client tuned as the
// csr stage tunes its own (csr.TuneClient): the stage's own client for the
// approver, a clientset for the rest.
type csrBench struct {
	n         *cluster.Node
	etcd, api *cluster.Proc
	boot      kubernetes.Interface
	admin     kubernetes.Interface
	approver  *kube.Client
	ca        *pki.CA
}

func startCSRBench(ctx context.Context, b *testing.B) *csrBench {
	e := &csrBench{n: cluster.Kubeadm(b, cluster.Options{})}
	e.etcd = e.n.StartEtcd(b)
	e.api = e.n.StartAPIServer(b)
	if err := e.n.WaitReady(ctx, b, "/etc/kubernetes/admin.conf", e.api); err != nil {
		b.Fatal(err)
	}
	prepareBootstrap(ctx, b, e.n)
	ca, _ := os.ReadFile(e.n.Path("/etc/kubernetes/pki/ca.crt"))
	bootCfg := &rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", e.n.APIServerPort), BearerToken: tokenID + "." + tokenSecret,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca}, QPS: -1, Timeout: 30 * time.Second}
	e.boot = kubernetes.NewForConfigOrDie(bootCfg)
	adminCfg, _ := clientcmd.BuildConfigFromFlags("", e.n.Path("/etc/kubernetes/super-admin.conf"))
	adminCfg.Timeout = 30 * time.Second
	e.admin = kubernetes.NewForConfigOrDie(csr.TuneClient(adminCfg))
	var err error
	if e.approver, err = kube.New(csr.TuneClient(adminCfg)); err != nil {
		b.Fatal(err)
	}
	caCert, _ := pki.ParseCertificate(ca)
	kb, _ := os.ReadFile(e.n.Path("/etc/kubernetes/pki/ca.key"))
	caKey, _ := pki.ParsePrivateKey(kb)
	e.ca = &pki.CA{Name: "ca", Cert: caCert, Key: caKey}
	return e
}

// run files csrBenchCount pending CSRs per iteration (outside the timer),
// calls prepare (outside the timer) and times the pass it returns.
//
// Besides the time it reports where the time goes, per 1,000 CSRs: CPU
// used by kube-apiserver, etcd and this process, and etcd's WAL fsyncs
// and backend commits (count and total time, from its metrics). Each
// pass's figures are also logged, with the load average, so that a run
// of -benchtime Nx shows the spread, not only the mean.
func (e *csrBench) run(ctx context.Context, b *testing.B, prepare func(round int) func() error) {
	var cpuAPI, cpuEtcd, cpuSelf time.Duration
	var etcdBefore, etcdAfter map[string]float64
	var total time.Duration
	b.ResetTimer() // the cluster's start is not what is measured
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fileCSRs(ctx, b, e.boot, e.n.Name, i, csrBenchCount)
		pass := prepare(i)
		a0, e0, s0 := procCPU(b, e.api.Cmd.Process.Pid), procCPU(b, e.etcd.Cmd.Process.Pid), selfCPU()
		m0 := etcdMetrics(b, e.n.EtcdMetricsPort)
		profiled := apiserverProfile(ctx, b, e.admin, i)
		start := time.Now()
		b.StartTimer()
		err := pass()
		took := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		<-profiled
		total += took
		da, de, ds := procCPU(b, e.api.Cmd.Process.Pid)-a0, procCPU(b, e.etcd.Cmd.Process.Pid)-e0, selfCPU()-s0
		cpuAPI, cpuEtcd, cpuSelf = cpuAPI+da, cpuEtcd+de, cpuSelf+ds
		m1 := etcdMetrics(b, e.n.EtcdMetricsPort)
		if etcdBefore == nil {
			etcdBefore, etcdAfter = map[string]float64{}, map[string]float64{}
		}
		for k := range m1 {
			etcdBefore[k] += m0[k]
			etcdAfter[k] += m1[k]
		}
		b.Logf("pass %d: %s wall; CPU apiserver %s, etcd %s, this process %s; %v fsyncs; %s",
			i, took.Round(time.Millisecond), da, de, ds.Round(10*time.Millisecond),
			m1["etcd_disk_wal_fsync_duration_seconds_count"]-m0["etcd_disk_wal_fsync_duration_seconds_count"], loadAvg())
		if err := e.admin.CertificatesV1().CertificateSigningRequests().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	per := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	delta := func(k string) float64 { return (etcdAfter[k] - etcdBefore[k]) / float64(b.N) }
	b.ReportMetric(float64(csrBenchCount), "csrs/op")
	b.ReportMetric(per(total), "wall-ms/op")
	b.ReportMetric(per(cpuAPI), "apiserver-cpu-ms/op")
	b.ReportMetric(per(cpuEtcd), "etcd-cpu-ms/op")
	b.ReportMetric(per(cpuSelf), "approver-cpu-ms/op")
	b.ReportMetric(delta("etcd_disk_wal_fsync_duration_seconds_count"), "fsyncs/op")
	b.ReportMetric(1000*delta("etcd_disk_wal_fsync_duration_seconds_sum"), "fsync-ms/op")
	b.ReportMetric(delta("etcd_disk_backend_commit_duration_seconds_count"), "commits/op")
	b.ReportMetric(1000*delta("etcd_disk_backend_commit_duration_seconds_sum"), "commit-ms/op")
}

// loadAvg is the machine's load average as uptime prints it.
func loadAvg() string {
	s, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(s))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}

// fileCSRs files count kubelet client CSRs for node with the bootstrap
// token, 16 at a time.
func fileCSRs(ctx context.Context, b *testing.B, boot kubernetes.Interface, node string, round, count int) {
	var wg sync.WaitGroup
	errs := make(chan error, count)
	jobs := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				_, err := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%d-%04d", round, j)},
					Spec: certificatesv1.CertificateSigningRequestSpec{SignerName: csr.SignerClientKubelet, Request: csrPEM(key, "system:node:"+node, nil, nil),
						Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}}}, metav1.CreateOptions{})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	for j := 0; j < count; j++ {
		jobs <- j
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// procCPU is the user+system CPU time a process has used so far.
func procCPU(b *testing.B, pid int) time.Duration {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// fields after the command (which is in parentheses): state is [0],
	// utime [11], stime [12], in clock ticks (USER_HZ, 100 on Linux).
	f := strings.Fields(string(s[strings.LastIndexByte(string(s), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// etcdMetrics reads the etcd disk metrics (sums and counts) from its
// plain-HTTP metrics port.
func etcdMetrics(b *testing.B, port int) map[string]float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "etcd_disk_") {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok || !(strings.HasSuffix(k, "_sum") || strings.HasSuffix(k, "_count")) {
			continue
		}
		m[k], _ = strconv.ParseFloat(v, 64)
	}
	return m
}

// apiserverProfile, when KUBECPR_BENCH_PPROF_DIR is set, starts a CPU
// profile of kube-apiserver (its /debug/pprof, as system:masters) long
// enough to cover one pass, and waits until the server collects samples;
// the channel closes when the profile is saved.
func apiserverProfile(ctx context.Context, b *testing.B, cs kubernetes.Interface, round int) <-chan struct{} {
	done := make(chan struct{})
	dir := os.Getenv("KUBECPR_BENCH_PPROF_DIR")
	if dir == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		data, err := cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", "8").Timeout(30 * time.Second).DoRaw(ctx)
		if err != nil {
			b.Errorf("apiserver profile: %v", err)
			return
		}
		if err := os.WriteFile(fmt.Sprintf("%s/apiserver-%d.pprof", dir, round), data, 0o644); err != nil {
			b.Error(err)
		}
	}()
	time.Sleep(200 * time.Millisecond) // the profile request reaches the server first
	return done
}

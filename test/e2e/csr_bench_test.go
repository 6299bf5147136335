package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
	n := cluster.Kubeadm(b, cluster.Options{})
	etcd := n.StartEtcd(b)
	api := n.StartAPIServer(b)
	if err := n.WaitReady(ctx, b, "/etc/kubernetes/admin.conf", api); err != nil {
		b.Fatal(err)
	}
	prepareBootstrap(ctx, b, n)
	ca, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.crt"))
	bootCfg := &rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", n.APIServerPort), BearerToken: tokenID + "." + tokenSecret,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca}, QPS: -1, Timeout: 30 * time.Second}
	boot := kubernetes.NewForConfigOrDie(bootCfg)
	adminCfg, _ := clientcmd.BuildConfigFromFlags("", n.Path("/etc/kubernetes/super-admin.conf"))
	adminCfg.Timeout = 30 * time.Second
	admin := kubernetes.NewForConfigOrDie(csr.TuneClient(adminCfg))
	caCert, _ := pki.ParseCertificate(ca)
	kb, _ := os.ReadFile(n.Path("/etc/kubernetes/pki/ca.key"))
	caKey, _ := pki.ParsePrivateKey(kb)
	workers, _ := strconv.Atoi(os.Getenv("KUBECPR_BENCH_CSR_WORKERS"))
	const count = 1000
	var cpuAPI, cpuEtcd, cpuSelf time.Duration
	var etcdBefore, etcdAfter map[string]float64
	var total time.Duration
	b.ResetTimer() // the cluster's start is not what is measured
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fileCSRs(ctx, b, boot, n.Name, i, count)
		a := &csr.Approver{Client: admin, CA: &pki.CA{Name: "ca", Cert: caCert, Key: caKey}, Sign: csr.SignAlways, Workers: workers,
			Policy: csr.Policy{Nodes: map[string]csr.Node{n.Name: {Name: n.Name}}}}
		a0, e0, s0 := procCPU(b, api.Cmd.Process.Pid), procCPU(b, etcd.Cmd.Process.Pid), selfCPU()
		m0 := etcdMetrics(b, n.EtcdMetricsPort)
		profiled := apiserverProfile(ctx, b, admin, i)
		start := time.Now()
		b.StartTimer()
		res, err := a.Pass(ctx)
		if err != nil {
			b.Fatal(err)
		}
		<-profiled
		if len(res.Approved) != count || len(res.Signed) != count {
			b.Fatalf("approved %d, signed %d, want %d", len(res.Approved), len(res.Signed), count)
		}
		b.StopTimer()
		total += time.Since(start)
		cpuAPI += procCPU(b, api.Cmd.Process.Pid) - a0
		cpuEtcd += procCPU(b, etcd.Cmd.Process.Pid) - e0
		cpuSelf += selfCPU() - s0
		m1 := etcdMetrics(b, n.EtcdMetricsPort)
		if etcdBefore == nil {
			etcdBefore, etcdAfter = map[string]float64{}, map[string]float64{}
		}
		for k := range m1 {
			etcdBefore[k] += m0[k]
			etcdAfter[k] += m1[k]
		}
		if err := admin.CertificatesV1().CertificateSigningRequests().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	per := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	delta := func(k string) float64 { return (etcdAfter[k] - etcdBefore[k]) / float64(b.N) }
	b.ReportMetric(float64(count), "csrs/op")
	b.ReportMetric(per(total), "wall-ms/op")
	b.ReportMetric(per(cpuAPI), "apiserver-cpu-ms/op")
	b.ReportMetric(per(cpuEtcd), "etcd-cpu-ms/op")
	b.ReportMetric(per(cpuSelf), "approver-cpu-ms/op")
	b.ReportMetric(delta("etcd_disk_wal_fsync_duration_seconds_count"), "fsyncs/op")
	b.ReportMetric(1000*delta("etcd_disk_wal_fsync_duration_seconds_sum"), "fsync-ms/op")
	b.ReportMetric(delta("etcd_disk_backend_commit_duration_seconds_count"), "commits/op")
	b.ReportMetric(1000*delta("etcd_disk_backend_commit_duration_seconds_sum"), "commit-ms/op")
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

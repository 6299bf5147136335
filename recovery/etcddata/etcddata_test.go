package etcddata_test

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kubecpr/kubecpr/recovery/etcddata"
	"github.com/kubecpr/kubecpr/test/cluster"
)

// TestRealEtcd runs a real etcd v3.5 member on loopback, writes through
// the real etcdctl, and reads its data file while it runs (the copy path:
// etcd holds the flock) and after it stopped (read in place).
func TestRealEtcd(t *testing.T) {
	bin := cluster.Binaries(t)
	dir := t.TempDir()
	cport, pport := cluster.FreePort(t), cluster.FreePort(t)
	curl, purl := fmt.Sprintf("http://127.0.0.1:%d", cport), fmt.Sprintf("http://127.0.0.1:%d", pport)
	etcd := exec.Command(filepath.Join(bin, "etcd"), "--name=m1", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+curl, "--advertise-client-urls="+curl,
		"--listen-peer-urls="+purl, "--initial-advertise-peer-urls="+purl,
		"--initial-cluster=m1="+purl, "--initial-cluster-state=new", "--listen-metrics-urls=")
	var log strings.Builder
	etcd.Stdout, etcd.Stderr = &log, &log
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	defer etcd.Process.Kill()
	ctl := func(args ...string) {
		t.Helper()
		for i := 0; ; i++ {
			out, err := exec.Command(filepath.Join(bin, "etcdctl"), append([]string{"--endpoints=" + curl}, args...)...).CombinedOutput()
			if err == nil {
				return
			}
			if i > 50 {
				t.Fatalf("etcdctl %v: %v\n%s\netcd:\n%s", args, err, out, log.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	ctl("put", "a", "1")
	ctl("put", "a", "2")
	ctl("put", "b", "x")
	ctl("del", "b")
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm-config", Namespace: "kube-system"},
		Data:       map[string]string{"ClusterConfiguration": clusterConfig},
	}
	var enc bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(cm, &enc); err != nil {
		t.Fatal(err)
	}
	put := exec.Command(filepath.Join(bin, "etcdctl"), "--endpoints="+curl, "put", etcddata.KubeadmConfigKey)
	put.Stdin = bytes.NewReader(enc.Bytes())
	if out, err := put.CombinedOutput(); err != nil {
		t.Fatalf("etcdctl put kubeadm-config: %v\n%s", err, out)
	}
	db := filepath.Join(dir, "data", "member", "snap", "db")
	time.Sleep(300 * time.Millisecond) // etcd's batch commit interval is 100 ms

	check := func(t *testing.T, wantLive bool) {
		d, err := etcddata.Open(db)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if d.Live() != wantLive {
			t.Errorf("Live() = %v, want %v", d.Live(), wantLive)
		}
		m, err := d.Membership()
		if err != nil {
			t.Fatal(err)
		}
		if m.ConsistentIndex == 0 {
			t.Errorf("consistent index 0")
		}
		var got []string
		for _, mb := range m.Members {
			got = append(got, mb.Name+"="+strings.Join(mb.PeerURLs, ","))
		}
		if diff := cmp.Diff([]string{"m1=" + purl}, got); diff != "" {
			t.Errorf("members (-want +got):\n%s", diff)
		}
		kv, err := d.Get("a")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff("2", string(kv.Value)); diff != "" {
			t.Errorf("Get(a) (-want +got):\n%s", diff)
		}
		if _, err := d.Get("b"); !errors.Is(err, etcddata.ErrNotFound) {
			t.Errorf("Get(b) (deleted) = %v, want ErrNotFound", err)
		}
	}
	t.Run("running", func(t *testing.T) {
		start := time.Now()
		check(t, true)
		t.Logf("read while etcd runs in %s", time.Since(start))
	})
	etcd.Process.Kill()
	etcd.Wait()
	t.Run("stopped", func(t *testing.T) { check(t, false) })
	t.Run("kubeadm config", func(t *testing.T) {
		got, err := etcddata.KubeadmConfig(db)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(clusterConfig, string(got)); diff != "" {
			t.Errorf("KubeadmConfig (-want +got):\n%s", diff)
		}
	})
}

const clusterConfig = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncertificateValidityPeriod: 2160h0m0s\n"

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkRunUntilKubeconfigs times a whole `kubecpr run --until
// kubeconfigs` as a process on a generated expired node: inventory, backup,
// journal with fsyncs, 14 renewals, atomic writes. Copying the tree is
// outside the timer.
func BenchmarkRunUntilKubeconfigs(b *testing.B) {
	template := expiredNode(b)
	bin := kubecprBin(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		root := filepath.Join(b.TempDir(), "node")
		if out, err := exec.Command("cp", "-a", template, root).CombinedOutput(); err != nil {
			b.Fatalf("cp: %v %s", err, out)
		}
		b.StartTimer()
		cmd := exec.Command(bin, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("kubecpr: %v\n%s", err, out)
		}
	}
}

// BenchmarkKubeadmRenewAll times real `kubeadm certs renew all` (v1.33) on
// the same generated tree, for comparison: it renews the same leaves and
// kubeconfigs, with no backup and no journal.
func BenchmarkKubeadmRenewAll(b *testing.B) {
	dir := os.Getenv("KUBECPR_TESTBIN_DIR")
	if dir == "" {
		b.Fatal("KUBECPR_TESTBIN_DIR is not set: run `make bench` (it builds kubeadm)")
	}
	template := expiredNode(b)
	cfg := "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.33.13\ncertificatesDir: /etc/kubernetes/pki\n"
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		root := filepath.Join(b.TempDir(), "node")
		if out, err := exec.Command("cp", "-a", template, root).CombinedOutput(); err != nil {
			b.Fatalf("cp: %v %s", err, out)
		}
		os.MkdirAll(filepath.Join(root, "tmp"), 0o755)
		os.WriteFile(filepath.Join(root, "tmp/kubeadm.yaml"), []byte(cfg), 0o600)
		b.StartTimer()
		cmd := exec.Command(filepath.Join(dir, "kubeadm"), "certs", "renew", "all", "--config", "/tmp/kubeadm.yaml", "--rootfs", root)
		cmd.Dir = "/"
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("kubeadm: %v\n%s", err, out)
		}
	}
}

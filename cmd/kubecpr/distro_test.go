package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// layTree creates the given node paths (directories, or files when they
// have an extension) under a new root.
func layTree(t *testing.T, paths ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range paths {
		hp := filepath.Join(root, filepath.FromSlash(p))
		if filepath.Ext(p) == "" {
			if err := os.MkdirAll(hp, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hp, []byte("generated for a test\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// k3s and RKE2 nodes are refused by every command that reads the node,
// with the product's own command, before anything is written.
func TestK3sAndRKE2AreRefusedWithTheirOwnCommand(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []string
		want  []string
	}{
		{"k3s server", []string{"/etc/rancher/k3s/k3s.yaml", "/var/lib/rancher/k3s/server/tls/server-ca.crt", "/var/lib/rancher/k3s/agent/client-kubelet.crt"},
			[]string{"k3s server", "k3s certificate rotate", "systemctl start k3s", "kubecpr changed nothing"}},
		{"rke2 server", []string{"/etc/rancher/rke2/rke2.yaml", "/var/lib/rancher/rke2/server/tls/server-ca.crt"},
			[]string{"RKE2 server", "rke2 certificate rotate", "systemctl start rke2-server"}},
		{"rke2 agent", []string{"/var/lib/rancher/rke2/agent/client-kubelet.crt"},
			[]string{"RKE2 agent", "systemctl restart rke2-agent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := layTree(t, tc.paths...)
			for _, args := range [][]string{{"check"}, {"diagnose", "--offline"}, {"plan"}, {"run"}} {
				before := snapshot(t, root)
				r := kubecpr(t, nil, rootArgs(root, args...)...)
				if r.code != ExitPrecondition {
					t.Errorf("%v: exit %d, want %d\n%s%s", args, r.code, ExitPrecondition, r.stdout, r.stderr)
				}
				for _, w := range tc.want {
					if !strings.Contains(r.stderr, w) {
						t.Errorf("%v: stderr lacks %q:\n%s", args, w, r.stderr)
					}
				}
				if strings.Contains(r.stderr, "--config") {
					t.Errorf("%v: sends the operator to --config:\n%s", args, r.stderr)
				}
				if diff := diffSnapshots(before, snapshot(t, root)); diff != "" {
					t.Errorf("%v changed the node:\n%s", args, diff)
				}
				if _, err := os.Stat(filepath.Join(root, "var/lib/kubecpr")); err == nil {
					t.Errorf("%v created kubecpr's state dir", args)
				}
			}
		})
	}
}

func TestOpenShiftSaysWhatKubecprDoesThere(t *testing.T) {
	root := layTree(t, "/etc/kubernetes/static-pod-resources/kube-apiserver-pod-3/kube-apiserver-pod.yaml",
		"/etc/kubernetes/kubeconfig", "/var/lib/kubelet/kubeconfig")
	r := kubecpr(t, nil, rootArgs(root, "check")...)
	for _, w := range []string{"OpenShift 4 node", "limited to the node part", "regenerate-certificates", "oc adm certificate approve"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
		}
	}
}

package kubeadmbed

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
)

// StartSSH runs a real OpenSSH sshd inside every node, on the node's own
// address, port 22, as on a host an operator reaches, and writes a kubecpr
// inventory that reaches every node through it: the node's known host key
// and an authorized key of its own, and --kubelet-restart-command for the
// node's supervised kubelet (systemd is not PID 1 here). It returns the
// inventory's path. The sshd processes stop in cleanup.
func (b *Bed) StartSSH(t testing.TB) string {
	t.Helper()
	var inv strings.Builder
	inv.WriteString("apiVersion: kubecpr.io/v1alpha1\nkind: Inventory\nnodes:\n")
	for _, n := range b.Nodes {
		s := sshtest.StartWith(t, sshtest.Options{Enter: n.Enter(), Host: n.Address, Port: 22, Dial: b.Dial})
		fmt.Fprintf(&inv, "- name: %s\n  role: %s\n  address: %s\n", n.Name, n.Role, n.Address)
		fmt.Fprintf(&inv, "  ssh: {user: %s, host: %s, port: 22, identityFile: %s, knownHosts: %s}\n", s.User, n.Address, s.IdentityFile, s.KnownHostsFile)
		fmt.Fprintf(&inv, "  args: [--kubelet-restart-command, %s]\n", yamlQuote(n.KubeletRestartCommand()))
	}
	p := filepath.Join(b.Dir, "inventory.yaml")
	if err := os.WriteFile(p, []byte(inv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func yamlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Driver is argv that runs prog inside node n, as an operator logged in on
// it would: its mount, network and UTS namespaces, the clean environment.
func (n *Node) Driver(prog string, args ...string) []string {
	argv := append(append([]string{"nsenter"}, n.Enter()...), "--", "env", "-i")
	argv = append(argv, cleanEnv...)
	return append(append(argv, prog), args...)
}

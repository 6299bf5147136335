package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubecpr/kubecpr/recovery/journal"
)

// The data-loss traps of issue 11: each reproduced the way an operator
// under pressure meets it, and each must now leave nothing lost.

func TestRehearseSandboxKeepsWhatWasThere(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)

	full := t.TempDir()
	notes := filepath.Join(full, "notes")
	if err := os.WriteFile(notes, []byte("my notes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := kubecpr(t, nil, rootArgs(root, "rehearse", "--sandbox", full)...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "not empty") {
		t.Errorf("non-empty sandbox: exit %d, want %d and 'not empty'\n%s", r.code, ExitPrecondition, r.stderr)
	}
	if b, err := os.ReadFile(notes); err != nil || string(b) != "my notes\n" {
		t.Fatalf("the sandbox's own file is gone or changed: %q %v", b, err)
	}

	// The node itself as the sandbox: refused, the node intact.
	r = kubecpr(t, nil, rootArgs(root, "rehearse", "--sandbox", root)...)
	if r.code != ExitPrecondition {
		t.Errorf("--sandbox = --root: exit %d, want %d\n%s", r.code, ExitPrecondition, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("rehearse --sandbox ROOT changed the node:\n%s", d)
	}

	// An empty directory of the operator's stays, emptied of what kubecpr
	// put there; a new one is removed whole.
	empty := t.TempDir()
	if r := kubecpr(t, nil, rootArgs(root, "rehearse", "--sandbox", empty)...); r.code != 0 {
		t.Fatalf("rehearse in an empty dir: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if ents, err := os.ReadDir(empty); err != nil || len(ents) != 0 {
		t.Errorf("the empty sandbox dir: %v entries, err %v; want it kept and empty", len(ents), err)
	}
	fresh := filepath.Join(t.TempDir(), "new")
	if r := kubecpr(t, nil, rootArgs(root, "rehearse", "--sandbox", fresh)...); r.code != 0 {
		t.Fatalf("rehearse in a new dir: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Errorf("the sandbox kubecpr created is still there: %v", err)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("rehearsals changed the node:\n%s", d)
	}
}

// A file someone writes into the sandbox while the rehearsal runs is not
// kubecpr's: it stays, with the directories that hold it, and is named
// (issue 19 item 4: it was removed 10 times out of 10). Everything kubecpr
// put there goes.
func TestRehearseRemovesOnlyWhatItCreated(t *testing.T) {
	root := expiredNode(t)
	for _, given := range []bool{true, false} {
		sb := filepath.Join(t.TempDir(), "sb")
		theirs := filepath.Join(sb, "etc", "kubernetes", "theirs.txt")
		args := []string{"rehearse", "--sandbox", sb}
		if !given {
			// The default temporary sandbox: found through the output.
			args = []string{"rehearse"}
			theirs = ""
		}
		shell := `d=$(ls -d ${TMPDIR:-/tmp}/kubecpr-rehearsal-* 2>/dev/null | head -1); echo mine > "$d/etc/kubernetes/theirs.txt"`
		if given {
			shell = "echo mine > " + theirs
		}
		r := kubecpr(t, []string{"KUBECPR_SHELL_AFTER_RECORD=3", "KUBECPR_SHELL=" + shell, "TMPDIR=" + t.TempDir()}, rootArgs(root, args...)...)
		if r.code != 0 {
			t.Fatalf("rehearse: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if !given {
			i := strings.Index(r.stdout, "rehearsal in ")
			if i < 0 {
				t.Fatalf("no sandbox named:\n%s", r.stdout)
			}
			sb = strings.Fields(r.stdout[i+len("rehearsal in "):])[0]
			theirs = filepath.Join(sb, "etc", "kubernetes", "theirs.txt")
		}
		if b, err := os.ReadFile(theirs); err != nil || string(b) != "mine\n" {
			t.Errorf("sandbox given %v: the file written during the rehearsal is gone or changed: %q %v", given, b, err)
		}
		if !strings.Contains(r.stderr, "keeps 1 file(s) that kubecpr did not create, e.g. "+theirs) {
			t.Errorf("sandbox given %v: the kept file is not named:\n%s", given, r.stderr)
		}
		var left []string
		filepath.WalkDir(sb, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && p != theirs {
				left = append(left, p)
			}
			return nil
		})
		if len(left) > 0 {
			t.Errorf("sandbox given %v: kubecpr's own files left: %v", given, left)
		}
	}
}

func TestFlagsAfterArguments(t *testing.T) {
	root := expiredNode(t)
	before := snapshot(t, root)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	renewed := snapshot(t, root)
	ents, err := os.ReadDir(filepath.Join(root, "var/lib/kubecpr/backups"))
	if err != nil || len(ents) != 1 {
		t.Fatalf("backups: %v %v", ents, err)
	}
	id := ents[0].Name()

	// --dry-run after the RUN-ID is a dry run.
	r := kubecpr(t, nil, "--now", now.Format(time.RFC3339), "backup", "restore", id, "--dry-run", "--root", root)
	if r.code != 0 {
		t.Fatalf("restore --dry-run after the argument: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(renewed, snapshot(t, root)); d != "" {
		t.Fatalf("a dry-run restore changed the node:\n%s", d)
	}
	// Global flags after the command.
	if r := kubecpr(t, nil, "check", "--root", root, "--now", now.Format(time.RFC3339)); r.code != 0 {
		t.Errorf("check --root after the command: exit %d\n%s", r.code, r.stderr)
	}
	// A stray argument is an error before anything happens.
	if r := kubecpr(t, nil, rootArgs(root, "rollback", "now")...); r.code != ExitFailed || !strings.Contains(r.stderr, "takes no arguments") {
		t.Errorf("rollback now: exit %d, want %d and 'takes no arguments'\n%s", r.code, ExitFailed, r.stderr)
	}
	if d := diffSnapshots(renewed, snapshot(t, root)); d != "" {
		t.Fatalf("a refused command changed the node:\n%s", d)
	}
	if r := kubecpr(t, nil, "rollback", "--root", root, "--now", now.Format(time.RFC3339)); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s", r.code, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("rollback is not byte-identical:\n%s", d)
	}
}

// TestAbsoluteLinksStayInsideRoot: a node whose /var/lib/kubelet and
// /etc/kubernetes/pki/etcd are absolute links (a separate disk). Under
// --root they resolve inside the root, as a chroot would; a decoy at the
// same path on the host is never read or written.
func TestAbsoluteLinksStayInsideRoot(t *testing.T) {
	root := expiredNode(t)
	host := t.TempDir() // the "same path" on the host: a decoy
	move := func(np, to string) {
		t.Helper()
		inRoot := filepath.Join(root, to)
		if err := os.MkdirAll(filepath.Dir(inRoot), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(root, np), inRoot); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(to, filepath.Join(root, np)); err != nil {
			t.Fatal(err)
		}
		// The decoy: the same tree at the link's absolute path on the host.
		if out, err := exec.Command("cp", "-a", inRoot, filepath.Join(to)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	move("var/lib/kubelet", filepath.Join(host, "kubelet"))
	move("etc/kubernetes/pki/etcd", filepath.Join(host, "etcd-pki"))
	// A decoy state dir too: the journal and backups (with keys) must not
	// land there.
	if err := os.MkdirAll(filepath.Join(root, "var/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	decoy := treeOf(t, host)
	before := snapshot(t, root)

	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run with linked dirs: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(decoy, treeOf(t, host)); d != "" {
		t.Fatalf("the run changed files outside --root:\n%s", d)
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Errorf("check after the run: exit %d\n%s", r.code, r.stdout)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Fatalf("rollback is not byte-identical:\n%s", d)
	}
	if d := diffSnapshots(decoy, treeOf(t, host)); d != "" {
		t.Fatalf("rollback changed files outside --root:\n%s", d)
	}

	// A rehearsal copies the link targets from inside the node too.
	if r := kubecpr(t, nil, rootArgs(root, "rehearse")...); r.code != 0 {
		t.Fatalf("rehearse with linked dirs: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(decoy, treeOf(t, host)); d != "" {
		t.Fatalf("the rehearsal changed files outside --root:\n%s", d)
	}
}

func treeOf(t *testing.T, dir string) map[string]string { return snapshot(t, dir) }

// TestSpecialFilesAsCredentials: a FIFO, a device and a huge file where a
// certificate belongs are refused promptly, with the file named.
func TestSpecialFilesAsCredentials(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, p string)
	}{
		{"fifo", func(t *testing.T, p string) {
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"link to a device", func(t *testing.T, p string) {
			dev := filepath.Join(filepath.Dir(p), "zero")
			if err := syscall.Mknod(dev, syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
				t.Skipf("mknod (needs root): %v", err)
			}
			if err := os.Symlink("zero", p); err != nil {
				t.Fatal(err)
			}
		}},
		{"huge", func(t *testing.T, p string) {
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(1 << 30); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := expiredNode(t)
			p := filepath.Join(root, "etc/kubernetes/pki/apiserver.crt")
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			tc.make(t, p)
			for _, args := range [][]string{{"check"}, {"run", "--until", "kubeconfigs"}} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				cmd := exec.CommandContext(ctx, kubecprBin(t), rootArgs(root, args...)...)
				out, err := cmd.CombinedOutput()
				hung := ctx.Err() == context.DeadlineExceeded
				cancel()
				if hung {
					t.Fatalf("%v hangs on a %s", args, tc.name)
				}
				if err == nil || !strings.Contains(string(out), "apiserver.crt") {
					t.Errorf("%v: err %v, want a failure naming apiserver.crt:\n%s", args, err, out)
				}
			}
		})
	}
}

// Issue 19 item 13: without systemd (as here) and without
// --kubelet-restart-command, a run that would bounce is refused up front;
// the files-only run the refusal suggests is not refused again, and its
// rollback, which restarts nothing, needs no restart command either.
// (--cri-socket makes the copy live, as on the node itself.)
func TestNoSystemdRefusalSuggestsARunThatWorks(t *testing.T) {
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		t.Skip("systemd is PID 1 here: the refusal this tests cannot happen")
	}
	root := expiredNode(t)
	before := snapshot(t, root)
	live := []string{"--cri-socket", filepath.Join(t.TempDir(), "none.sock")}
	r := kubecpr(t, nil, rootArgs(root, append([]string{"run"}, live...)...)...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "pass --kubelet-restart-command CMD, or renew the files only with `kubecpr run --until kubeconfigs`") {
		t.Fatalf("run without systemd: exit %d, want %d with the way on\n%s", r.code, ExitPrecondition, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, append([]string{"run", "--until", "kubeconfigs"}, live...)...)...)
	if r.code != 0 {
		t.Fatalf("the suggested `run --until kubeconfigs` was refused: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, append([]string{"rollback"}, live...)...)...)
	if r.code != 0 {
		t.Fatalf("rollback of the files-only run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

// Issue 19 item 8: kubelet-client-current.pem as a directory. The run
// used to exit 0 without a word about the kubelet's credential (and check
// still exited 2 afterwards); now it refuses before any change, naming it.
func TestKubeletCredentialAsDirectoryRefused(t *testing.T) {
	root := expiredNode(t)
	pem := filepath.Join(root, "var/lib/kubelet/pki/kubelet-client-current.pem")
	if err := os.Remove(pem); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(pem, 0o700); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != ExitPrecondition || !strings.Contains(r.stderr, "/var/lib/kubelet/pki/kubelet-client-current.pem") || !strings.Contains(r.stderr, "directory") {
		t.Fatalf("run with the kubelet's credential a directory: exit %d, want %d naming it\n%s%s", r.code, ExitPrecondition, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("the refused run changed the node:\n%s", d)
	}
}

// Issue 19 item 12: certificates that are symlinks (apiserver.crt ->
// apiserver-2025.crt; a kubeconfig linked to a dated copy) are renewed at
// their targets: the links stay links, the run succeeds, check is clean,
// and rollback is byte-identical.
func TestSymlinkedCertificatesRenewedAtTheirTargets(t *testing.T) {
	root := expiredNode(t)
	pkiDir := filepath.Join(root, "etc/kubernetes/pki")
	for _, f := range []string{"apiserver.crt", "apiserver.key"} {
		dated := strings.Replace(f, "apiserver", "apiserver-2025", 1)
		if err := os.Rename(filepath.Join(pkiDir, f), filepath.Join(pkiDir, dated)); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(dated, filepath.Join(pkiDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	kdir := filepath.Join(root, "etc/kubernetes")
	if err := os.Rename(filepath.Join(kdir, "admin.conf"), filepath.Join(kdir, "admin-2025.conf")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/kubernetes/admin-2025.conf", filepath.Join(kdir, "admin.conf")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, l := range []string{"etc/kubernetes/pki/apiserver.crt", "etc/kubernetes/pki/apiserver.key", "etc/kubernetes/admin.conf"} {
		if st, err := os.Lstat(filepath.Join(root, l)); err != nil || st.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s is no longer a symlink (%v)", l, err)
		}
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Errorf("check after the run: exit %d\n%s", r.code, r.stdout)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if d := diffSnapshots(before, snapshot(t, root)); d != "" {
		t.Errorf("rollback not byte-identical:\n%s", d)
	}
}

// Issue 19 item 15: a user's kubeconfig whose current context is another
// cluster, with a context for this one. check judged the other cluster's
// user ("not signed by ca"), --update-user-kubeconfigs was refused, and
// the note said to copy admin.conf over the file (wiping the other
// clusters). Now this cluster's entry is checked and renewed, and the
// other cluster's entries stay as they were.
func TestUserKubeconfigWithAnotherCurrentCluster(t *testing.T) {
	root := expiredNode(t)
	kc := filepath.Join(root, "root/.kube/config")
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	var here string
	for name := range cfg.Contexts {
		here = name
	}
	other := "elsewhere"
	otherCA := mustRead(t, filepath.Join(root, "etc/kubernetes/pki/front-proxy-ca.crt"))
	cfg.Clusters[other] = &clientcmdapi.Cluster{Server: "https://127.0.0.9:6443", CertificateAuthorityData: otherCA}
	cfg.AuthInfos[other] = &clientcmdapi.AuthInfo{ClientCertificateData: mustRead(t, filepath.Join(root, "etc/kubernetes/pki/front-proxy-client.crt")),
		ClientKeyData: mustRead(t, filepath.Join(root, "etc/kubernetes/pki/front-proxy-client.key"))}
	cfg.Contexts[other] = &clientcmdapi.Context{Cluster: other, AuthInfo: other}
	cfg.CurrentContext = other
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	r := kubecpr(t, nil, rootArgs(root, "check")...)
	if strings.Contains(r.stdout, "not signed") || !strings.Contains(r.stdout, "/root/.kube/config") {
		t.Errorf("check judges the other cluster's user:\n%s%s", r.stdout, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != 0 || !strings.Contains(r.stdout, "context \""+here+"\"") || strings.Contains(r.stdout, "/root/.kube/config trusts this cluster and is expired; pass --update-user-kubeconfigs to refresh it, or copy") {
		t.Fatalf("run: exit %d, want a note naming context %q without the copy advice\n%s%s", r.code, here, r.stdout, r.stderr)
	}
	if r := kubecpr(t, nil, rootArgs(root, "rollback")...); r.code != 0 {
		t.Fatalf("rollback: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs", "--update-user-kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("run --update-user-kubeconfigs: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	after, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	if after.CurrentContext != other || string(after.Clusters[other].CertificateAuthorityData) != string(otherCA) ||
		string(after.AuthInfos[other].ClientCertificateData) != string(cfg.AuthInfos[other].ClientCertificateData) {
		t.Errorf("the other cluster's entries changed")
	}
	if r := kubecpr(t, nil, rootArgs(root, "check")...); r.code != 0 {
		t.Errorf("check after renewing this cluster's entry: exit %d\n%s", r.code, r.stdout)
	}
}

// Issue 19 item 16: the lock was per state dir, so two runs on one node
// with different --state-dir both proceeded. The second is refused now
// (exit 4) while the first holds the node: its tree is locked too.
func TestTwoStateDirsOneNode(t *testing.T) {
	for _, linked := range []bool{false, true} {
		t.Run(fmt.Sprintf("kubernetes dir a symlink %v", linked), func(t *testing.T) { twoStateDirs(t, linked) })
	}
}

func twoStateDirs(t *testing.T, linked bool) {
	root := expiredNode(t)
	if linked {
		// The tree lock follows the link inside the root (O_NOFOLLOW on
		// the link itself would skip the lock without a word).
		linkKubernetesDir(t, root)
	}
	codeFile := filepath.Join(t.TempDir(), "code")
	second := fmt.Sprintf("%s --root %s --now %s --state-dir /var/lib/other run --until certs >/dev/null 2>&1; echo $? > %s",
		kubecprBin(t), root, now.Format(time.RFC3339), codeFile)
	r := kubecpr(t, []string{"KUBECPR_SHELL_AFTER_RECORD=3", "KUBECPR_SHELL=" + second}, rootArgs(root, "run", "--until", "kubeconfigs")...)
	if r.code != 0 {
		t.Fatalf("the first run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	b, err := os.ReadFile(codeFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != fmt.Sprint(ExitLocked) {
		t.Errorf("a second run with another --state-dir while the first ran: exit %s, want %d", got, ExitLocked)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/other/runs")); err == nil {
		t.Error("the second run started a run of its own")
	}
}

// Issue 19 item 16: a journal record carrying another run's id, with a
// valid checksum, was accepted: another run's run-end appended to this
// run's journal made rollback say "nothing to roll back" (exit 0). It is
// a damaged journal now (exit 5), and the node is left alone.
func TestForeignJournalRecordRefused(t *testing.T) {
	root := expiredNode(t)
	if r := kubecpr(t, nil, rootArgs(root, "run", "--until", "kubeconfigs")...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	during := snapshot(t, root)
	// Another run's run-end, in sequence and with a valid checksum.
	j, err := journal.Open(journalOf(t, root))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(journal.Record{RunID: "20261101T000000Z-0ther0", Kind: journal.KindRunEnd, Data: map[string]string{"status": "rolled-back"}}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	r := kubecpr(t, nil, rootArgs(root, "rollback")...)
	if r.code != ExitJournal || !strings.Contains(r.stderr, "belongs to run 20261101T000000Z-0ther0") {
		t.Fatalf("rollback with another run's record appended: exit %d, want %d naming the foreign record\n%s%s", r.code, ExitJournal, r.stdout, r.stderr)
	}
	if d := diffSnapshots(during, snapshot(t, root)); d != "" {
		t.Errorf("the refused rollback changed the node:\n%s", d)
	}
}

func journalOf(t *testing.T, root string) string {
	t.Helper()
	id := strings.TrimSpace(string(mustRead(t, filepath.Join(root, "var/lib/kubecpr/current"))))
	return filepath.Join(root, "var/lib/kubecpr/runs", id, "journal.log")
}

// Issue 19 item 16: SIGINT or SIGTERM during start-up (package
// initialisation, before main installed its handler) killed kubecpr by
// signal instead of the documented exit 130. The signal is sent as soon
// as the early catch is in place, during the rest of the start-up.
func TestSignalDuringStartUpExits130(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		ready := filepath.Join(t.TempDir(), "ready")
		cmd := exec.Command(kubecprBin(t), "--root", t.TempDir(), "check")
		cmd.Env = append(os.Environ(), "KUBECPR_EARLYSIG_READY="+ready)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := os.Stat(ready); err == nil {
				break
			}
			time.Sleep(50 * time.Microsecond)
		}
		cmd.Process.Signal(sig)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%s during start-up: %v, want exit 130", sig, err)
		}
		if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() || ee.ExitCode() != ExitInterrupted {
			t.Errorf("%s during start-up: %v (signaled %v), want exit %d", sig, err, ws.Signaled(), ExitInterrupted)
		}
	}
}

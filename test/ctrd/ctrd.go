// Package ctrd starts a real containerd daemon for a test: its own root,
// state dir, socket and config under a short temporary directory, cgroupfs,
// restrict_oom_score_adj in the CRI section. It needs root, containerd and
// runc (hack/install-deps.sh installs them from Debian), and fails the test
// rather than skipping when they are missing.
package ctrd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Daemon is a running containerd.
type Daemon struct {
	Dir, Socket, Root, State, ConfigPath, LogPath string
	Cmd                                           *exec.Cmd
	done                                          chan struct{}
}

const config = `version = 2
root = "%[1]s/root"
state = "%[1]s/state"

[grpc]
  address = "%[2]s"

[ttrpc]
  address = "%[2]s.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
`

// Start runs containerd for the test and stops it (and every shim and
// mount it made) in cleanup.
func Start(t testing.TB) *Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("real containerd needs root: run the tests as root (CI does)")
	}
	for _, b := range []string{"containerd", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: run `make deps` (apt-get install -y containerd runc)", b)
		}
	}
	dir, err := os.MkdirTemp("/tmp", "ctrd") // short: the socket path must stay under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	dm := &Daemon{Dir: dir, Socket: filepath.Join(dir, "c.sock"), Root: filepath.Join(dir, "root"),
		State: filepath.Join(dir, "state"), ConfigPath: filepath.Join(dir, "config.toml"), LogPath: filepath.Join(dir, "containerd.log"),
		done: make(chan struct{})}
	if err := os.WriteFile(dm.ConfigPath, []byte(fmt.Sprintf(config, dir, dm.Socket)), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(dm.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	dm.Cmd = exec.Command("containerd", "--config", dm.ConfigPath)
	dm.Cmd.Stdout, dm.Cmd.Stderr = logf, logf
	dm.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := dm.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { dm.Cmd.Wait(); logf.Close(); close(dm.done) }()
	t.Cleanup(func() { dm.stop(t) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := containerd.New(dm.Socket, containerd.WithTimeout(2*time.Second))
		if err == nil {
			_, err = c.Version(context.Background())
			c.Close()
			if err == nil {
				return dm
			}
		}
		select {
		case <-dm.done:
			t.Fatalf("containerd exited:\n%s", tail(dm.LogPath, 20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s: %v\n%s", dm.Socket, err, tail(dm.LogPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(p string, n int) string {
	b, _ := os.ReadFile(p)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Client returns a client (closed in cleanup).
func (d *Daemon) Client(t testing.TB) *containerd.Client {
	t.Helper()
	c, err := containerd.New(d.Socket, containerd.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Import loads an OCI tar into namespace ns and unpacks it.
func (d *Daemon) Import(t testing.TB, ns, tarPath string) []images.Image {
	t.Helper()
	c := d.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil {
		t.Fatalf("import %s: %v", tarPath, err)
	}
	for _, img := range imgs {
		if err := containerd.NewImage(c, img).Unpack(ctx, "overlayfs"); err != nil {
			t.Fatalf("unpack %s: %v", img.Name, err)
		}
	}
	return imgs
}

// stop kills every task, stops the daemon and its shims, unmounts what is
// left under the directory and removes it.
func (d *Daemon) stop(t testing.TB) {
	if c, err := containerd.New(d.Socket, containerd.WithTimeout(2*time.Second)); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		nss, _ := c.NamespaceService().List(ctx)
		for _, ns := range nss {
			nctx := namespaces.WithNamespace(ctx, ns)
			cs, _ := c.Containers(nctx)
			for _, ctr := range cs {
				if task, err := ctr.Task(nctx, nil); err == nil {
					task.Kill(nctx, syscall.SIGKILL)
					if ch, err := task.Wait(nctx); err == nil {
						select {
						case <-ch:
						case <-time.After(5 * time.Second):
						}
					}
					task.Delete(nctx)
				}
				ctr.Delete(nctx, containerd.WithSnapshotCleanup)
			}
		}
		cancel()
		c.Close()
	}
	_ = syscall.Kill(-d.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.Cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
	// shims outlive the daemon by design: end the ones of this daemon
	out, _ := exec.Command("pgrep", "-f", "containerd-shim.*"+d.Socket).Output()
	for _, pid := range strings.Fields(string(out)) {
		var p int
		fmt.Sscan(pid, &p)
		if p > 0 {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	for _, m := range Mounts(d.Dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
	os.RemoveAll(d.Dir)
}

// Mounts lists mount points under dir (from /proc/self/mountinfo), deepest first.
func Mounts(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

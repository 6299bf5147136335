// Package ctrd starts a real containerd daemon for a test: its own root,
// state dir, socket, config and opt dir under a short temporary directory,
// the CRI plugin loaded with cgroupfs (SystemdCgroup = false) and
// restrict_oom_score_adj, no registry configuration. It needs root,
// containerd and runc (hack/install-deps.sh, i.e. `apt-get install -y
// containerd runc`), and fails the test rather than skipping when they are
// missing.
//
// Containers made with Run, or with the Runtime and Cgroup options, keep
// their runc state under the daemon's state dir and their cgroups under a
// parent named after the daemon, so daemons of tests running in parallel
// (go test runs packages in parallel) never share a runc root or a cgroup,
// and cleanup removes both.
package ctrd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Daemon is a running containerd.
type Daemon struct {
	// Dir holds everything below; removed in cleanup.
	Dir, Socket, Root, State, ConfigPath, LogPath string
	// Snapshotter is "overlayfs", or "native" where an overlay mount cannot
	// be made under Dir (or KUBECPR_CTRD_SNAPSHOTTER says so). Import
	// unpacks for it and the CRI plugin is configured with it.
	Snapshotter string
	// Version is the daemon's version, e.g. "1.6.20~ds1".
	Version string
	Cmd     *exec.Cmd
	// Started is how long the daemon took to answer.
	Started time.Duration

	done chan struct{}
}

// Plugins that need what this machine does not have (or that only make
// noise): the daemon starts without them.
var disabledPlugins = []string{
	"io.containerd.snapshotter.v1.aufs",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.internal.v1.tracing",
	"io.containerd.tracing.processor.v1.otlp",
}

const configTemplate = `version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [%[3]s]

[grpc]
  address = %[4]q

[ttrpc]
  address = "%[4]s.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[5]q
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
    sandbox_image = %[10]q
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %[6]q
      conf_dir = %[7]q
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = %[8]q
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = %[9]q
`

// sbin directories are added to PATH: runc is /usr/sbin/runc on Debian and
// the shim looks it up in the daemon's PATH.
const sbinPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func lookPath(name, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// Options for StartWith.
type Options struct {
	// SandboxImage is the CRI plugin's sandbox_image (default
	// DefaultSandboxImage). No registry is reachable: import it before a
	// kubelet asks for a pod.
	SandboxImage string
	// Binds are bind mounts made in a private mount namespace that the
	// daemon (and its shims and containers) runs in: what a kubelet passes
	// as a hostPath is then resolved there. Each Target is created on the
	// host when missing (an empty directory, or an empty file for a file
	// Source). Enter the namespace with Daemon.MountNamespace.
	Binds []Bind
	// Overlays are host directories (e.g. /etc, /usr, /var) given, in the
	// namespace, a writable overlay layer under the daemon's Dir: what is
	// created there (a mount point, a kubelet's DirectoryOrCreate hostPath)
	// never reaches the host, and is gone with the daemon. Made before the
	// Binds, so a Target under one needs no directory on the host.
	Overlays []string
	// Enter runs the daemon in namespaces that already exist (a node of a
	// test bed made of namespaces): nsenter's namespace flags, e.g.
	// "--target", PID, "--mount", "--net", "--uts". nsenter does not fork
	// for these, so MountNamespace still names the daemon's. Binds and
	// Overlays are for a namespace the daemon makes itself: not with Enter
	// (make them in the entered one, with BindScript).
	Enter []string
	// Socket is the daemon's address (default Dir/c.sock); its directory
	// is created. It must stay under 108 bytes.
	Socket string
}

// Bind mounts Source at Target.
type Bind struct{ Source, Target string }

// DefaultSandboxImage is the pause image the CRI plugin is configured with.
const DefaultSandboxImage = "registry.k8s.io/pause:3.10"

// Start runs containerd for the test and stops it (with every task, shim,
// mount and cgroup it made) in cleanup.
func Start(t testing.TB) *Daemon {
	t.Helper()
	return StartWith(t, Options{})
}

// MountNamespace is the daemon's mount namespace ("/proc/PID/ns/mnt"): the
// host's unless Options.Binds made a private one.
func (d *Daemon) MountNamespace() string {
	return fmt.Sprintf("/proc/%d/ns/mnt", d.Cmd.Process.Pid)
}

// BindScript is the shell StartWith runs in a new mount namespace (made
// with `unshare --mount --propagation private`) for Options.Overlays and
// Options.Binds: each overlay (its layers under dir), then each bind
// (targets created), then `exec "$@"`. For namespaces made elsewhere.
func BindScript(dir string, overlays []string, binds []Bind) (string, error) {
	return bindScript(dir, overlays, binds)
}

// bindScript is the shell run by unshare: make each target, bind-mount,
// then exec containerd (same pid, so MountNamespace names the namespace).
func bindScript(dir string, overlays []string, binds []Bind) (string, error) {
	var b strings.Builder
	b.WriteString("set -e\n")
	for i, o := range overlays {
		up, work := filepath.Join(dir, "overlay", strconv.Itoa(i), "upper"), filepath.Join(dir, "overlay", strconv.Itoa(i), "work")
		if err := os.MkdirAll(up, 0o755); err != nil {
			return "", err
		}
		if err := os.MkdirAll(work, 0o755); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "mount -t overlay overlay -o %s %s\n",
			shellQuote("lowerdir="+o+",upperdir="+up+",workdir="+work), shellQuote(o))
	}
	for _, m := range binds {
		st, err := os.Stat(m.Source)
		if err != nil {
			return "", fmt.Errorf("bind source: %w", err)
		}
		if st.IsDir() {
			fmt.Fprintf(&b, "mkdir -p %s\n", shellQuote(m.Target))
		} else {
			fmt.Fprintf(&b, "[ -e %[1]s ] || { mkdir -p \"$(dirname %[1]s)\"; : > %[1]s; }\n", shellQuote(m.Target))
		}
		fmt.Fprintf(&b, "mount --bind %s %s\n", shellQuote(m.Source), shellQuote(m.Target))
	}
	b.WriteString("exec \"$@\"\n")
	return b.String(), nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Daemon {
	t.Helper()
	if o.SandboxImage == "" {
		o.SandboxImage = DefaultSandboxImage
	}
	if os.Geteuid() != 0 {
		t.Fatal("ctrd: a real containerd needs root (mounts, cgroups, runc): run the tests as root, as CI does")
	}
	path := os.Getenv("PATH") + ":" + sbinPath
	var bin string
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		p, err := lookPath(b, path)
		if err != nil {
			t.Fatalf("ctrd: %s not found: install it with `apt-get install -y containerd runc` (`make deps`, .ci/run does it)", b)
		}
		if b == "containerd" {
			bin = p
		}
	}
	dir, err := os.MkdirTemp("/tmp", "ctrd") // short: a unix socket path must stay under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "c.sock"), Root: filepath.Join(dir, "root"),
		State: filepath.Join(dir, "state"), ConfigPath: filepath.Join(dir, "config.toml"),
		LogPath: filepath.Join(dir, "containerd.log"), done: make(chan struct{})}
	t.Cleanup(func() { d.stop(t) }) // registered first, so it runs after the clients' Close
	if o.Socket != "" {
		if len(o.Socket) >= 100 {
			t.Fatalf("ctrd: socket path %s is too long for a unix socket", o.Socket)
		}
		if err := os.MkdirAll(filepath.Dir(o.Socket), 0o755); err != nil {
			t.Fatal(err)
		}
		d.Socket = o.Socket
	}
	if len(o.Enter) > 0 && (len(o.Binds) > 0 || len(o.Overlays) > 0) {
		t.Fatal("ctrd: Options.Enter with Binds or Overlays: make them in the entered namespace")
	}
	d.Snapshotter = chooseSnapshotter(t, dir)
	var quoted []string
	for _, p := range disabledPlugins {
		quoted = append(quoted, strconv.Quote(p))
	}
	cfg := fmt.Sprintf(configTemplate, d.Root, d.State, strings.Join(quoted, ", "), d.Socket,
		filepath.Join(dir, "opt"), filepath.Join(dir, "cni", "bin"), filepath.Join(dir, "cni", "net.d"),
		d.Snapshotter, d.runcRoot(), o.SandboxImage)
	if err := os.WriteFile(d.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(d.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d.Cmd = exec.Command(bin, "--config", d.ConfigPath)
	if len(o.Binds) > 0 || len(o.Overlays) > 0 {
		script, err := bindScript(dir, o.Overlays, o.Binds)
		if err != nil {
			logf.Close()
			close(d.done)
			t.Fatalf("ctrd: %v", err)
		}
		d.Cmd = exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", bin, "--config", d.ConfigPath)
	}
	if len(o.Enter) > 0 {
		d.Cmd = exec.Command("nsenter", append(append(append([]string{}, o.Enter...), "--"), bin, "--config", d.ConfigPath)...)
	}
	d.Cmd.Env = append(os.Environ(), "PATH="+path)
	d.Cmd.Stdout, d.Cmd.Stderr = logf, logf
	d.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.Cmd.Start(); err != nil {
		logf.Close()
		close(d.done)
		t.Fatalf("ctrd: starting %s: %v", bin, err)
	}
	go func() { d.Cmd.Wait(); logf.Close(); close(d.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := containerd.New(d.Socket, containerd.WithTimeout(2*time.Second))
		if err == nil {
			var v containerd.Version
			v, err = c.Version(context.Background())
			c.Close()
			if err == nil {
				d.Version, d.Started = v.Version, time.Since(start)
				break
			}
		}
		select {
		case <-d.done:
			t.Fatalf("ctrd: containerd exited at start (%v):\n%s", d.Cmd.ProcessState, tail(d.LogPath, 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctrd: containerd did not answer on %s within 30s: %v\n%s", d.Socket, err, tail(d.LogPath, 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d.Snapshotter == "overlayfs" && !d.pluginOK(t, "io.containerd.snapshotter.v1", "overlayfs") {
		t.Logf("ctrd: the overlayfs snapshotter did not load: unpacking for native")
		d.Snapshotter = "native"
	}
	return d
}

// chooseSnapshotter returns overlayfs when an overlay mount can be made
// under dir (what containerd's overlayfs snapshotter itself checks), native
// otherwise (e.g. /tmp itself on overlayfs in some containers).
func chooseSnapshotter(t testing.TB, dir string) string {
	switch s := os.Getenv("KUBECPR_CTRD_SNAPSHOTTER"); s {
	case "overlayfs", "native":
		return s
	case "":
	default:
		t.Fatalf("ctrd: KUBECPR_CTRD_SNAPSHOTTER=%q: want overlayfs or native", s)
	}
	p := filepath.Join(dir, "overlay-probe")
	defer os.RemoveAll(p)
	for _, s := range []string{"lower", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(p, s), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(p, "merged")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(p, "lower"), filepath.Join(p, "upper"), filepath.Join(p, "work"))
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Logf("ctrd: overlay mount not possible under %s (%v): using the native snapshotter", dir, err)
		return "native"
	}
	if err := syscall.Unmount(merged, 0); err != nil {
		syscall.Unmount(merged, syscall.MNT_DETACH)
	}
	return "overlayfs"
}

func (d *Daemon) pluginOK(t testing.TB, typ, id string) bool {
	c := d.Client(t)
	resp, err := c.IntrospectionService().Plugins(context.Background(), fmt.Sprintf(`type==%q,id==%q`, typ, id))
	if err != nil || len(resp.Plugins) != 1 {
		return false
	}
	return resp.Plugins[0].InitErr == nil
}

// Done is closed when the daemon process has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Plugins maps every plugin of the daemon ("type.id") to its load error,
// "" when it loaded.
func (d *Daemon) Plugins(t testing.TB) map[string]string {
	t.Helper()
	resp, err := d.Client(t).IntrospectionService().Plugins(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range resp.Plugins {
		out[p.Type+"."+p.ID] = ""
		if p.InitErr != nil {
			out[p.Type+"."+p.ID] = p.InitErr.Message
		}
	}
	return out
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
		t.Fatalf("ctrd: client for %s: %v", d.Socket, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Import loads an OCI image tar into namespace ns and unpacks every image
// for d.Snapshotter.
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
		t.Fatalf("ctrd: import %s: %v", tarPath, err)
	}
	if len(imgs) == 0 {
		t.Fatalf("ctrd: import %s: no image (no io.containerd.image.name / org.opencontainers.image.ref.name annotation?)", tarPath)
	}
	for _, img := range imgs {
		if err := containerd.NewImage(c, img).Unpack(ctx, d.Snapshotter); err != nil {
			t.Fatalf("ctrd: unpack %s for %s: %v", img.Name, d.Snapshotter, err)
		}
	}
	return imgs
}

func (d *Daemon) runcRoot() string { return filepath.Join(d.State, "runc") }

// cgroupParent is the name of the cgroup under which Cgroup puts the
// containers of this daemon, in every hierarchy.
func (d *Daemon) cgroupParent() string { return filepath.Base(d.Dir) }

// Runtime is runc v2 with its state (runc --root) under the daemon's state
// dir instead of the host's /run/containerd/runc.
func (d *Daemon) Runtime() containerd.NewContainerOpts {
	return containerd.WithRuntime("io.containerd.runc.v2", &runcoptions.Options{Root: d.runcRoot()})
}

// Cgroup puts the container in /<daemon dir name>/<namespace>/<id> rather
// than containerd's default /<namespace>/<id>, which daemons of parallel
// tests would share. Cleanup removes these cgroups.
func (d *Daemon) Cgroup() oci.SpecOpts {
	return func(ctx context.Context, _ oci.Client, c *containers.Container, s *oci.Spec) error {
		ns, err := namespaces.NamespaceRequired(ctx)
		if err != nil {
			return err
		}
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		s.Linux.CgroupsPath = "/" + d.cgroupParent() + "/" + ns + "/" + c.ID
		return nil
	}
}

// Spec is a container for Run.
type Spec struct {
	ID     string
	Image  string // name of an image imported into the namespace
	Labels map[string]string
	Args   []string // replaces the image's entrypoint and cmd when set
	Env    []string // added to the image's
}

// Container is a container started by Run.
type Container struct {
	Container containerd.Container
	Task      containerd.Task
	Exit      <-chan containerd.ExitStatus
	Log       string // the task's stdout and stderr
}

// Run creates and starts a container in namespace ns the way the kubelet
// runs a static pod's container as far as the runtime sees it: host
// network, labels, output to a log file; with Runtime and Cgroup.
func (d *Daemon) Run(t testing.TB, ns string, s Spec) *Container {
	t.Helper()
	c := d.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	img, err := c.GetImage(ctx, s.Image)
	if err != nil {
		t.Fatalf("ctrd: image %s in %s: %v", s.Image, ns, err)
	}
	specOpts := []oci.SpecOpts{oci.WithImageConfig(img), oci.WithHostNamespace(specs.NetworkNamespace), d.Cgroup()}
	if len(s.Args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(s.Args...))
	}
	if len(s.Env) > 0 {
		specOpts = append(specOpts, oci.WithEnv(s.Env))
	}
	ctr, err := c.NewContainer(ctx, s.ID, d.Runtime(), containerd.WithImage(img),
		containerd.WithSnapshotter(d.Snapshotter), containerd.WithNewSnapshot(s.ID, img),
		containerd.WithContainerLabels(s.Labels), containerd.WithNewSpec(specOpts...))
	if err != nil {
		t.Fatalf("ctrd: container %s: %v", s.ID, err)
	}
	logDir := filepath.Join(d.Dir, "logs", ns)
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	out := &Container{Container: ctr, Log: filepath.Join(logDir, s.ID+".log")}
	if out.Task, err = ctr.NewTask(ctx, cio.LogFile(out.Log)); err != nil {
		t.Fatalf("ctrd: task %s: %v", s.ID, err)
	}
	if out.Exit, err = out.Task.Wait(ctx); err != nil {
		t.Fatalf("ctrd: wait %s: %v", s.ID, err)
	}
	if err := out.Task.Start(ctx); err != nil {
		t.Fatalf("ctrd: start %s: %v", s.ID, err)
	}
	return out
}

// WaitOutput waits until the container's log holds want and returns it.
func (c *Container) WaitOutput(t testing.TB, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(c.Log)
		if bytes.Contains(b, []byte(want)) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctrd: %s did not print %q within %s; printed %q", c.Container.ID(), want, timeout, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop kills every task, stops the daemon, ends the shims and container
// processes it left, unmounts what is left under Dir, removes the
// daemon's cgroups and Dir. What it cannot remove fails the test.
func (d *Daemon) stop(t testing.TB) {
	if t.Failed() {
		t.Logf("ctrd: containerd log (%s), last lines:\n%s", d.LogPath, tail(d.LogPath, 40))
	}
	if d.Cmd != nil && d.Cmd.Process != nil {
		select {
		case <-d.done:
		default:
			d.deleteAll()
			_ = syscall.Kill(-d.Cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-d.Cmd.Process.Pid, syscall.SIGKILL)
				<-d.done
			}
		}
	}
	var problems []string
	// Shims outlive the daemon by design (own session): end this daemon's,
	// and whatever still runs in its cgroups.
	pids := append(d.shims(), d.cgroupProcs()...)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	for _, p := range pids {
		if !waitGone(p, 5*time.Second) {
			problems = append(problems, fmt.Sprintf("process %d survived SIGKILL", p))
		}
	}
	for _, m := range Mounts(d.Dir) {
		if err := syscall.Unmount(m, 0); err != nil {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				problems = append(problems, fmt.Sprintf("unmount %s: %v", m, err))
			}
		}
	}
	problems = append(problems, d.removeCgroups(10*time.Second)...)
	if err := os.RemoveAll(d.Dir); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		t.Errorf("ctrd: cleanup of %s left:\n  %s", d.Dir, strings.Join(problems, "\n  "))
	}
}

// removeCgroups removes the daemon's cgroups, deepest first. A cgroup
// stays busy while anything in it has not finished exiting: a process
// forked in a container after the kill above, or one the kernel is still
// tearing down (seen in CI: EBUSY on every level right after the kills).
// So it kills what is still in them and tries again until the deadline,
// and reports what was left with the processes still inside.
func (d *Daemon) removeCgroups(timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var busy []string
		for _, cg := range d.cgroupDirs() {
			if err := syscall.Rmdir(cg); err != nil && !errors.Is(err, syscall.ENOENT) {
				busy = append(busy, fmt.Sprintf("rmdir %s: %v", cg, err))
			}
		}
		if len(busy) == 0 {
			return nil
		}
		procs := d.cgroupProcs()
		if time.Now().After(deadline) {
			if len(procs) > 0 {
				busy = append(busy, fmt.Sprintf("processes still in the cgroups: %v", procs))
			}
			return busy
		}
		for _, p := range procs {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deleteAll kills and deletes every task and container, in every namespace.
func (d *Daemon) deleteAll() {
	c, err := containerd.New(d.Socket, containerd.WithTimeout(2*time.Second))
	if err != nil {
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nss, _ := c.NamespaceService().List(ctx)
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, _ := c.Containers(nctx)
		for _, ctr := range cs {
			if task, err := ctr.Task(nctx, nil); err == nil {
				if ch, err := task.Wait(nctx); err == nil {
					if task.Kill(nctx, syscall.SIGKILL) == nil {
						select {
						case <-ch:
						case <-time.After(5 * time.Second):
						}
					}
				}
				task.Delete(nctx, containerd.WithProcessKill)
			}
			ctr.Delete(nctx, containerd.WithSnapshotCleanup)
		}
	}
}

// shims are the processes started with -address d.Socket.
func (d *Daemon) shims() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == d.Socket {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// Processes lists the live processes that belong to this daemon: its shims
// and what runs in its cgroups (containers made with Cgroup).
func (d *Daemon) Processes() []int { return append(d.shims(), d.cgroupProcs()...) }

func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// a zombie (state Z) has ended; its parent reaps it
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cgroupRoots are the mount points of the cgroup hierarchies (v1 and v2).
func cgroupRoots() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				if f[i+1] == "cgroup" || f[i+1] == "cgroup2" {
					out = append(out, unescape(f[4]))
				}
				break
			}
		}
	}
	return out
}

// cgroupDirs lists this daemon's cgroups in every hierarchy, deepest first.
func (d *Daemon) cgroupDirs() []string {
	var out []string
	for _, root := range cgroupRoots() {
		top := filepath.Join(root, d.cgroupParent())
		filepath.WalkDir(top, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				out = append(out, p)
			}
			return nil
		})
	}
	sort.Slice(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out
}

func (d *Daemon) cgroupProcs() []int {
	seen := map[int]bool{}
	var out []int
	for _, cg := range d.cgroupDirs() {
		b, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// CgroupDirs lists the cgroups of this daemon's containers made with
// Cgroup, in every hierarchy, deepest first.
func (d *Daemon) CgroupDirs() []string { return d.cgroupDirs() }

// unescape decodes mountinfo's octal escapes (\040 for a space...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mounts lists the mount points at or under dir (from
// /proc/self/mountinfo), deepest first.
func Mounts(dir string) []string {
	dir = filepath.Clean(dir)
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescape(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// later mounts may sit on earlier ones: unmount in reverse order
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

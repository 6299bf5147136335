// Package bounce is the bounce stage: renewed files change nothing until
// the processes reload them. It restarts the kubelet, then etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler in that order
// — by stopping their containers so the kubelet recreates them from the
// manifests, or by moving each manifest out and back — waits for each to be
// healthy, and proves on the wire that it serves the certificate on disk.
package bounce

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/backup/etcdsnap"
	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/crashpoint"
	"github.com/kubecpr/kubecpr/recovery/health"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/runtime"
)

// Components in restart order.
var Components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// HoldingDir is where the manifests method parks a manifest: beside the
// static pod directory (same filesystem, so the move is a rename), where
// the kubelet does not look.
const HoldingDir = "/etc/kubernetes/manifests.kubecpr-out"

// Stage is the bounce stage.
var Stage = pipeline.Stage{
	Name:  "bounce",
	Short: "restart the kubelet and the static pods, wait for health, check the served certificates",
	Live:  true,
	Plan:  Plan,
	Undo:  Undo,
}

func manifestsDir(d pipeline.Data) string { return health.ManifestsDir(d) }

// Plan lists the restarts.
func Plan(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
	var present []string
	for _, c := range Components {
		if d.Node().Exists(path.Join(manifestsDir(d), c+".yaml")) || d.Node().Exists(path.Join(HoldingDir, c+".yaml")) {
			present = append(present, c)
		}
	}
	live := d.Live()
	if live == nil {
		what := "restart the kubelet, then " + strings.Join(present, ", ")
		return []pipeline.Action{{
			ID:      "bounce/skipped",
			Summary: "would " + what + " (not the live node: pass --cri-socket and --kubelet-restart-command to act on processes served from this root)",
			Run: func(ctx context.Context) (map[string]string, error) {
				return map[string]string{"skipped": what}, nil
			},
		}}, nil
	}
	if live.RestartMethod == "containerd" && live.Runtime != nil && len(present) > 0 {
		// Connect now: an unreachable runtime stops the run before any change.
		rt, err := live.Runtime()
		if err != nil {
			return nil, err
		}
		_ = rt
	}
	acts := []pipeline.Action{{
		ID:      "bounce/kubelet",
		Summary: "restart the kubelet (" + live.Services.Describe() + ") so it loads its renewed credentials",
		Run: func(ctx context.Context) (map[string]string, error) {
			start := time.Now()
			before := live.Services.State(ctx, "kubelet")
			if err := live.Services.Restart(ctx, "kubelet"); err != nil {
				if logs := live.Services.Logs(ctx, "kubelet", 10); logs != "" {
					err = fmt.Errorf("%w\nlast kubelet log lines:\n%s", err, logs)
				}
				return nil, err
			}
			after := live.Services.State(ctx, "kubelet")
			fmt.Fprintf(d.Out(), "      kubelet: %s before, %s after the restart\n", before, after)
			return map[string]string{"duration": time.Since(start).Round(time.Millisecond).String(), "state_before": before, "state_after": after}, nil
		},
	}}
	for _, c := range present {
		c := c
		summary := fmt.Sprintf("restart %s (%s), wait until healthy, check the served certificate", c, methodText(live.RestartMethod))
		if reloadsCertificates[c] {
			summary = fmt.Sprintf("prove %s healthy on the renewed certificates (it reloads them on each new connection), else restart it (%s) and wait until it is", c, methodText(live.RestartMethod))
		}
		acts = append(acts, pipeline.Action{
			ID:      "bounce/" + c,
			Summary: summary,
			Run: func(ctx context.Context) (map[string]string, error) {
				return Restart(ctx, d, c, true)
			},
		})
	}
	users, err := mountActions(ctx, d, live, present)
	if err != nil {
		return nil, err
	}
	acts = append(acts, users...)
	for _, ds := range live.RestartDaemonSets {
		ds := ds
		acts = append(acts, pipeline.Action{
			ID:      "bounce/daemonset/" + ds,
			Summary: "roll the pods of DaemonSet " + ds + " (kubectl rollout restart) so they pick up renewed certificates",
			Run: func(ctx context.Context) (map[string]string, error) {
				return restartDaemonSet(ctx, d, ds)
			},
		})
	}
	return acts, nil
}

func methodText(m string) string {
	if m == "manifests" {
		return "manifest moved out of " + node.ManifestsDir + " and back"
	}
	return "container stopped through containerd, recreated by the kubelet"
}

// Undo restarts again after rollback has restored the files.
func Undo(ctx context.Context, d pipeline.Data, actionID string, facts map[string]string) error {
	live := d.Live()
	if live == nil {
		return nil
	}
	name := strings.TrimPrefix(actionID, "bounce/")
	if strings.HasPrefix(name, "daemonset/") || strings.HasPrefix(name, "unmanaged/") {
		return nil // a rollout restart needs no undoing; an unmanaged container was left alone
	}
	if strings.HasPrefix(name, "mounts/") {
		return undoMount(ctx, d, name)
	}
	if facts["skipped"] != "" {
		return nil // nothing was done (a copy; a runtime that could not be reached)
	}
	switch name {
	case "skipped", "mounts-unknown":
		return nil
	case "kubelet":
		if err := live.Services.Restart(ctx, "kubelet"); err != nil {
			return err
		}
		if why := kubeletDown(ctx, d.Node(), kubeletSettle); why != "" {
			live.KubeletDown = why
			fmt.Fprintf(d.Out(), "      the kubelet does not run on the restored files (%s); on a kubeadm node that is how it was before the run if its restored client certificate is expired. "+
				"The static pods keep their containers until it runs again; `kubecpr run` recovers the node again\n", why)
		}
		return nil
	}
	if live.KubeletDown != "" {
		// Nothing would recreate the container: stopping it would only
		// take the component down. The files are the old ones; the
		// component loads them when the kubelet runs again.
		fmt.Fprintf(d.Out(), "      %s not restarted: the kubelet does not run (%s)\n", name, live.KubeletDown)
		return nil
	}
	// The restored files may be the expired ones: restart, wait for the new
	// container, but do not require health.
	_, err := Restart(ctx, d, name, false)
	return err
}

// ComponentError says which component did not come back, what its
// container said, and the ways on.
type ComponentError struct {
	Component string
	Err       error
	CrashLoop string // crashLoopNote: containers started for it since kubecpr acted that exited
	Logs      string
}

func (e *ComponentError) Error() string {
	msg := fmt.Sprintf("%s did not come back: %v", e.Component, e.Err)
	if e.CrashLoop != "" {
		msg += "\n" + e.CrashLoop
	}
	if e.Logs != "" {
		msg += "\nlast lines of its log:\n" + e.Logs
	}
	return msg + "\n`kubecpr resume` tries again after you fix the cause; `kubecpr rollback` restores the old files and restarts on them"
}

func (e *ComponentError) Unwrap() error { return e.Err }

// crashLoopNote says, when containers of comp created since kubecpr acted
// (not oldID, the one it stopped) have exited, that the component keeps
// exiting and the kubelet restarts it with a back-off: a timeout then
// usually means "it crashes" rather than "it is slow". The kubelet
// removes all but the newest dead containers of a pod, so the count is a
// lower bound. "" when none exited (or nothing is known).
func crashLoopNote(cs []runtime.Container, comp, oldID string, since time.Time) string {
	exited, started := 0, 0
	var last time.Time
	for _, c := range cs {
		if c.Name != comp || c.ID == oldID || c.Created.Before(since) {
			continue
		}
		started++
		if !c.Running {
			exited++
			if c.Created.After(last) {
				last = c.Created
			}
		}
	}
	if exited == 0 {
		return ""
	}
	hint := ""
	if comp == "kube-apiserver" {
		hint = " (on an overloaded machine kube-apiserver also exits by itself when its RBAC bootstrap takes over 30 s)"
	}
	return fmt.Sprintf("%d of the %d %s containers started since kubecpr restarted it exited (the latest exited one started %s UTC): it keeps exiting, and the kubelet restarts it with a back-off that doubles from 10 s to 5 minutes. Its log below says why%s; a longer --component-timeout on resume waits through the back-off",
		exited, started, comp, last.UTC().Format("15:04:05"), hint)
}

// Restart restarts one component and proves it healthy on the new files.
func Restart(ctx context.Context, d pipeline.Data, comp string, requireHealthy bool) (map[string]string, error) {
	live := d.Live()
	start := time.Now()
	timeout := live.ComponentTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	facts := map[string]string{"method": live.RestartMethod}
	oldLogs := logFiles(d.Node(), comp)
	var rt runtime.Runtime
	oldID := ""
	fail := func(err error) (map[string]string, error) {
		ce := &ComponentError{Component: comp, Err: err, Logs: LogTailSince(d.Node(), comp, 15, oldLogs)}
		if rt != nil {
			lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if cs, err := rt.ControlPlane(lctx); err == nil {
				ce.CrashLoop = crashLoopNote(cs, comp, oldID, start)
			}
			lcancel()
		}
		return nil, ce
	}
	// A manifest parked by an interrupted run goes back first.
	if err := putBack(d, comp); err != nil {
		return nil, err
	}
	if live.Runtime != nil {
		var err error
		if rt, err = live.Runtime(); err != nil {
			return nil, err
		}
	}
	var current runtime.Container
	if rt != nil {
		cs, err := rt.ControlPlane(cctx)
		if err != nil {
			return nil, err
		}
		if c, ok := runtime.Newest(cs, comp); ok {
			oldID, current = c.ID, c
		}
	}
	facts["old_container"] = oldID
	// A container the kubelet (re)started after the renewed files were
	// written already runs on them: an expired component that crashed
	// and came back while the run renewed the files (an API server whose
	// etcd client certificate had expired, an etcd member without
	// quorum). Restarting it would only start it a second time; it is
	// proven like any other, by its health and the certificate it serves.
	// Only on the way forward: a rollback restarts on the restored files.
	if requireHealthy && reloadsCertificates[comp] && current.Running {
		if serial, err := servesRenewed(cctx, d, comp); err == nil {
			facts["kept_container"], facts["served_serial"] = current.ID, serial
			facts["duration"] = time.Since(start).Round(time.Millisecond).String()
			fmt.Fprintf(d.Out(), "      %s reads its certificate files on every new connection: healthy and already serving the renewed ones on every port%s; not restarted\n",
				comp, servedNote(serial))
			return facts, nil
		}
	}
	if requireHealthy {
		if kept, renewed := runsOnRenewedFiles(d, current); kept {
			facts["kept_container"] = current.ID
			fmt.Fprintf(d.Out(), "      %s: container %.12s started %s, after the renewed files were last written (%s): already on them, not restarted\n",
				comp, current.ID, current.Created.UTC().Format("15:04:05.000"), renewed.UTC().Format("15:04:05.000"))
			return proveHealthy(cctx, d, comp, start, facts, fail)
		}
	}
	switch live.RestartMethod {
	case "manifests":
		forced, err := cycleManifest(cctx, d, rt, comp, oldID, live)
		if err != nil {
			return fail(err)
		}
		if forced {
			facts["stopped_through_runtime"] = "true"
		}
	default:
		if rt == nil {
			return nil, errors.New("no container runtime configured")
		}
		if oldID != "" {
			grace := stopGrace(live, timeout)
			if g, why := leaderlessGrace(cctx, d, comp, grace); why != "" {
				fmt.Fprintf(d.Out(), "      %s: %s: stopped with a %s grace, not %s\n", comp, why, g, grace)
				grace = g
			}
			if err := rt.Stop(cctx, oldID, grace); err != nil {
				return fail(err)
			}
			crashpoint.At("bounce-stopped-" + comp)
		}
	}
	if rt != nil {
		newID, err := waitNewContainer(cctx, rt, comp, oldID, start)
		if err != nil {
			return fail(fmt.Errorf("waiting for the kubelet to start a new %s container: %w", comp, err))
		}
		facts["new_container"] = newID
	}
	if !requireHealthy {
		fmt.Fprintf(d.Out(), "      %s restarted on the restored files (health not required: they may hold the expired certificates)\n", comp)
		return facts, nil
	}
	return proveHealthy(cctx, d, comp, start, facts, fail)
}

// proveHealthy waits for the component's health and checks the
// certificate it serves against the one on disk.
func proveHealthy(ctx context.Context, d pipeline.Data, comp string, start time.Time, facts map[string]string,
	fail func(error) (map[string]string, error)) (map[string]string, error) {
	serial, err := health.Wait(ctx, d, comp)
	if err != nil {
		return fail(err)
	}
	if serial != "" {
		facts["served_serial"] = serial
	}
	d2 := time.Since(start).Round(time.Millisecond)
	facts["duration"] = d2.String()
	fmt.Fprintf(d.Out(), "      %s healthy on the new files after %s%s\n", comp, d2, servedNote(serial))
	return facts, nil
}

// runsOnRenewedFiles reports whether container c is running and was
// created after every file the run renews was last written (renewed is
// that time): its process read them at start. "Written" is the latest
// modification time of the PKI directory tree and of the kubeconfigs in
// /etc/kubernetes, and of the directories holding them (a rename into a
// directory changes the directory's time, not the file's). Both times
// come from this machine's clock, not the run's (--now). Anything that
// cannot be read counts as "not proven": the container is restarted.
func runsOnRenewedFiles(d pipeline.Data, c runtime.Container) (bool, time.Time) {
	if c.ID == "" || !c.Running || c.Created.IsZero() {
		return false, time.Time{}
	}
	t := RenewedTargets(d)
	n := d.Node()
	var latest time.Time
	note := func(host string, follow bool) error {
		st, err := os.Lstat(host)
		if err == nil && follow && st.Mode()&os.ModeSymlink != 0 {
			st, err = os.Stat(host)
		}
		if err != nil {
			return err
		}
		if m := st.ModTime(); m.After(latest) {
			latest = m
		}
		return nil
	}
	if err := note(n.HostPath(t.KubernetesDir), true); err != nil {
		return false, time.Time{}
	}
	for _, k := range t.Kubeconfigs {
		if err := note(n.Path(k), true); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, time.Time{}
		}
	}
	err := filepath.WalkDir(n.HostPath(t.PKIDir), func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return note(p, true)
	})
	if err != nil {
		return false, time.Time{}
	}
	return c.Created.After(latest), latest
}

// reloadsCertificates are the components that read their certificate
// files again on every new TLS connection, so that renewed files take
// effect without a restart: etcd (since v3.2, for its client and peer
// ports and for the client certificate it presents to its peers). After
// the certs stage on every member of a fully expired etcd cluster, the
// running members form a quorum again by themselves within about a
// second. kube-apiserver reloads its serving certificate but not the
// client certificates it presents (etcd, kubelets, front proxy), and the
// controller-manager and scheduler read their kubeconfigs once: they are
// restarted.
var reloadsCertificates = map[string]bool{"etcd": true}

// servesRenewed proves without a restart that comp runs on the renewed
// files: healthy, and serving on every TLS port the certificate that is
// on disk. An etcd member that says it has no leader is not asked (its
// client port serves nothing until it has one).
func servesRenewed(ctx context.Context, d pipeline.Data, comp string) (string, error) {
	if comp == "etcd" {
		if man, err := d.Node().ReadFile(path.Join(manifestsDir(d), "etcd.yaml")); err == nil {
			if reason := etcdsnap.NoLeader(ctx, etcdsnap.MetricsFromManifest(man)); reason != "" {
				return "", errors.New(reason)
			}
		}
	}
	return health.Check(ctx, d, comp, 2*time.Second)
}

// noLeaderGrace is the SIGTERM grace of an etcd member that has no
// leader. Such a member commits nothing and, when it never had a quorum
// since it started (every member of a fully expired cluster), serves
// nothing: there is nothing to drain. Yet it takes its request timeout
// (7 s with kubeadm's settings) to stop on SIGTERM, while the other
// members, restarted at the same moment, wait for it to form a quorum.
// etcd is built to be killed (its WAL and database survive kill -9 and
// power loss), as the kubelet does after the pod's grace.
const noLeaderGrace = time.Second

// leaderlessGrace returns noLeaderGrace and why when comp is etcd and its
// metrics port says the member has no leader; grace and "" otherwise
// (another component, a member with a leader, no answer).
func leaderlessGrace(ctx context.Context, d pipeline.Data, comp string, grace time.Duration) (time.Duration, string) {
	if comp != "etcd" || grace <= noLeaderGrace {
		return grace, ""
	}
	man, err := d.Node().ReadFile(path.Join(manifestsDir(d), "etcd.yaml"))
	if err != nil {
		return grace, ""
	}
	metrics := etcdsnap.MetricsFromManifest(man)
	if reason := etcdsnap.NoLeader(ctx, metrics); reason != "" {
		return noLeaderGrace, fmt.Sprintf("the member has no leader (%s at %s/health: no quorum, nothing to drain)", reason, metrics)
	}
	return grace, ""
}

// stopGrace is the SIGTERM grace before SIGKILL: live.Grace (default 30 s,
// the kubelet's default terminationGracePeriodSeconds), but never more than
// half the component's timeout, so that a container slow to shut down
// leaves time for its replacement to start and be checked.
func stopGrace(live *pipeline.Live, timeout time.Duration) time.Duration {
	grace := live.Grace
	if grace == 0 {
		grace = 30 * time.Second
	}
	if timeout > 0 && grace > timeout/2 {
		grace = timeout / 2
	}
	return grace
}

func servedNote(serial string) string {
	if serial == "" {
		return ""
	}
	return ", serving certificate serial " + serial
}

// waitNewContainer waits until the kubelet has started a container of
// comp other than oldID: a running one, or one created since kubecpr acted
// (since) that already exited. A component that exits at once (a bad
// flag, expired files on the way back) may never be seen running between
// two polls; it was started all the same, and what follows says why it
// stops (proveHealthy's timeout with crashLoopNote and its log).
func waitNewContainer(ctx context.Context, rt runtime.Runtime, comp, oldID string, since time.Time) (string, error) {
	var lastErr error // the runtime's answer, when listing failed last
	for {
		cs, err := rt.ControlPlane(ctx)
		lastErr = err
		if err == nil {
			if c, ok := runtime.Newest(cs, comp); ok && c.ID != oldID && (c.Running || !c.Created.Before(since)) {
				return c.ID, nil
			}
		}
		select {
		case <-ctx.Done():
			if lastErr != nil && !errors.Is(lastErr, ctx.Err()) {
				return "", fmt.Errorf("%w (the container runtime could not list the containers: %v)", ctx.Err(), lastErr)
			}
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// cycleManifest moves the manifest out, waits until the container is gone,
// and moves it back. Each move is a durable rename; an interrupted cycle is
// repaired by putBack on resume or rollback.
//
// A kubelet that cannot reach the API server — just restarted, on expired
// credentials, or with the apiserver itself down — does not remove a
// static pod whose manifest went away ("skipping delete because sources
// aren't ready yet"). After live.ManifestWait the container is stopped
// through the runtime instead (forced is then true): the kubelet, which
// still wants the pod, starts it again on the new files.
func cycleManifest(ctx context.Context, d pipeline.Data, rt runtime.Runtime, comp, oldID string, live *pipeline.Live) (forced bool, err error) {
	n := d.Node()
	in := n.Path(path.Join(manifestsDir(d), comp+".yaml"))
	out := n.Path(path.Join(HoldingDir, comp+".yaml"))
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		return false, err
	}
	if err := atomicfile.Rename(in, out); err != nil {
		return false, fmt.Errorf("moving %s out: %w", in, err)
	}
	crashpoint.At("bounce-manifest-out-" + comp)
	if rt != nil && oldID != "" {
		wait := live.ManifestWait
		if wait == 0 {
			wait = 20 * time.Second
		}
		deadline := time.Now().Add(wait)
		for {
			cs, err := rt.ControlPlane(ctx)
			if err == nil {
				if c, ok := runtime.Newest(cs, comp); !ok || !c.Running || c.ID != oldID {
					break
				}
			}
			if !forced && time.Now().After(deadline) {
				fmt.Fprintf(d.Out(), "      the kubelet has not stopped %s %s after its manifest was moved out (a kubelet that cannot reach the API server keeps static pods: \"sources aren't ready\"); stopping container %.12s through the runtime\n", comp, wait, oldID)
				if err := rt.Stop(ctx, oldID, stopGrace(live, live.ComponentTimeout)); err != nil {
					_ = atomicfile.Rename(out, in)
					return true, fmt.Errorf("stopping %s through the runtime after the kubelet kept it: %w", comp, err)
				}
				forced = true
				continue
			}
			select {
			case <-ctx.Done():
				_ = atomicfile.Rename(out, in)
				return forced, fmt.Errorf("the kubelet did not stop %s after its manifest was removed: %w", comp, ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	if err := atomicfile.Rename(out, in); err != nil {
		return forced, fmt.Errorf("moving %s back: %w", in, err)
	}
	removeHoldingDir(n)
	return forced, nil
}

// removeHoldingDir removes the holding directory once it is empty.
func removeHoldingDir(n *node.Node) {
	dir := n.Path(HoldingDir)
	if os.Remove(dir) == nil {
		_ = atomicfile.SyncDir(filepath.Dir(dir))
	}
}

// putBack returns a parked manifest to the static pod directory.
func putBack(d pipeline.Data, comp string) error {
	n := d.Node()
	out := n.Path(path.Join(HoldingDir, comp+".yaml"))
	in := n.Path(path.Join(manifestsDir(d), comp+".yaml"))
	if _, err := os.Stat(out); err != nil {
		return nil
	}
	if _, err := os.Stat(in); err == nil {
		return fmt.Errorf("%s exists in both %s and %s: keep the right one and remove the other", comp, manifestsDir(d), HoldingDir)
	}
	fmt.Fprintf(d.Out(), "      putting back %s parked by an interrupted run\n", in)
	if err := atomicfile.Rename(out, in); err != nil {
		return err
	}
	removeHoldingDir(n)
	return nil
}

// ParkedManifests lists manifests left in the holding directory.
func ParkedManifests(n *node.Node) []string {
	ents, _ := os.ReadDir(n.HostPath(HoldingDir))
	var out []string
	for _, e := range ents {
		out = append(out, path.Join(HoldingDir, e.Name()))
	}
	sort.Strings(out)
	return out
}

// LogTail returns the last lines of a component's container log, from the
// kubelet's /var/log/pods layout under the node root: the newest log file
// that has something in it (a container that was just recreated may not
// have written yet).
func LogTail(n *node.Node, comp string, lines int) string {
	return LogTailSince(n, comp, lines, nil)
}

// logFiles are the component's container logs on disk now.
func logFiles(n *node.Node, comp string) map[string]bool {
	matches, _ := filepath.Glob(filepath.Join(n.HostPath("/var/log/pods"), "*", comp, "*.log"))
	out := map[string]bool{}
	for _, m := range matches {
		out[m] = true
	}
	return out
}

// LogTailSince is LogTail preferring the containers started after `old`
// was taken: when a new container fails at once (a bad flag), the old one
// may still be logging its graceful shutdown, and its lines would hide the
// cause. Without a new non-empty log, the most recently written one.
func LogTailSince(n *node.Node, comp string, lines int, old map[string]bool) string {
	newest := func(fresh bool) string {
		var best string
		var t time.Time
		for m := range logFiles(n, comp) {
			if fresh && old[m] {
				continue
			}
			if st, err := os.Stat(m); err == nil && st.Size() > 0 && st.ModTime().After(t) {
				best, t = m, st.ModTime()
			}
		}
		return best
	}
	file := newest(true)
	if file == "" {
		file = newest(false)
	}
	if file == "" {
		return ""
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

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
		acts = append(acts, pipeline.Action{
			ID:      "bounce/" + c,
			Summary: fmt.Sprintf("restart %s (%s), wait until healthy, check the served certificate", c, methodText(live.RestartMethod)),
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
		return live.Services.Restart(ctx, "kubelet")
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
	Logs      string
}

func (e *ComponentError) Error() string {
	msg := fmt.Sprintf("%s did not come back: %v", e.Component, e.Err)
	if e.Logs != "" {
		msg += "\nlast lines of its log:\n" + e.Logs
	}
	return msg + "\n`kubecpr resume` tries again after you fix the cause; `kubecpr rollback` restores the old files and restarts on them"
}

func (e *ComponentError) Unwrap() error { return e.Err }

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
	fail := func(err error) (map[string]string, error) {
		return nil, &ComponentError{Component: comp, Err: err, Logs: LogTailSince(d.Node(), comp, 15, oldLogs)}
	}
	// A manifest parked by an interrupted run goes back first.
	if err := putBack(d, comp); err != nil {
		return nil, err
	}
	var rt runtime.Runtime
	if live.Runtime != nil {
		var err error
		if rt, err = live.Runtime(); err != nil {
			return nil, err
		}
	}
	oldID := ""
	if rt != nil {
		cs, err := rt.ControlPlane(cctx)
		if err != nil {
			return nil, err
		}
		if c, ok := runtime.Newest(cs, comp); ok {
			oldID = c.ID
		}
	}
	facts["old_container"] = oldID
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
			if err := rt.Stop(cctx, oldID, stopGrace(live, timeout)); err != nil {
				return fail(err)
			}
			crashpoint.At("bounce-stopped-" + comp)
		}
	}
	if rt != nil {
		newID, err := waitNewContainer(cctx, rt, comp, oldID)
		if err != nil {
			return fail(fmt.Errorf("waiting for the kubelet to start a new %s container: %w", comp, err))
		}
		facts["new_container"] = newID
	}
	if !requireHealthy {
		fmt.Fprintf(d.Out(), "      %s restarted on the restored files (health not required: they may hold the expired certificates)\n", comp)
		return facts, nil
	}
	serial, err := health.Wait(cctx, d, comp)
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

func waitNewContainer(ctx context.Context, rt runtime.Runtime, comp, oldID string) (string, error) {
	for {
		cs, err := rt.ControlPlane(ctx)
		if err == nil {
			if c, ok := runtime.Newest(cs, comp); ok && c.ID != oldID && c.Running {
				return c.ID, nil
			}
		}
		select {
		case <-ctx.Done():
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

// Package service restarts the kubelet: through systemd on a real node, or
// through a command the operator gives (hosts without systemd, and tests).
package service

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Manager is what the bounce stage needs from a service manager.
type Manager interface {
	// Restart restarts the named service and returns once it was asked to.
	Restart(ctx context.Context, name string) error
	// State is the service's state ("active", "activating", "failed", ...;
	// "unknown" where the manager cannot tell).
	State(ctx context.Context, name string) string
	// Logs returns the service's last log lines ("" where there are none).
	Logs(ctx context.Context, name string, lines int) string
	// Describe says how restarts are done, for plans and journals.
	Describe() string
}

// Systemd uses systemctl (systemd's own CLI, present wherever systemd is).
type Systemd struct{}

var _ Manager = Systemd{}

// Available reports whether systemd is PID 1 here.
func Available() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

func (Systemd) Describe() string { return "systemctl restart" }

func (Systemd) Restart(ctx context.Context, name string) error {
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "systemctl", "restart", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl restart %s: %v: %s (see journalctl -u %s)", name, err, strings.TrimSpace(string(out)), name)
	}
	return nil
}

func (Systemd) State(ctx context.Context, name string) string {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(cctx, "systemctl", "is-active", name).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		return s
	}
	return "unknown"
}

func (Systemd) Logs(ctx context.Context, name string, lines int) string {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(cctx, "journalctl", "-u", name, "-n", fmt.Sprint(lines), "--no-pager", "-o", "cat").Output()
	return strings.TrimSpace(string(out))
}

// Command runs an operator-given shell command to restart a service
// (--kubelet-restart-command).
type Command struct{ Line string }

var _ Manager = Command{}

func (c Command) Describe() string { return "command: " + c.Line }

func (c Command) State(context.Context, string) string { return "unknown" }

func (c Command) Logs(context.Context, string, int) string { return "" }

func (c Command) Restart(ctx context.Context, name string) error {
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "/bin/sh", "-c", c.Line)
	cmd.Env = append(os.Environ(), "KUBECPR_SERVICE="+name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("restarting %s with %q: %v: %s", name, c.Line, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Missing stands where no manager can restart services (no systemd and no
// command given) for a run whose stages never restart anything: a
// `run --until kubeconfigs` on such a host. Restart says what to pass.
type Missing struct{ Why string }

var _ Manager = Missing{}

func (m Missing) Describe() string                       { return "none: " + m.Why }
func (Missing) State(context.Context, string) string     { return "unknown" }
func (Missing) Logs(context.Context, string, int) string { return "" }
func (m Missing) Restart(_ context.Context, name string) error {
	return fmt.Errorf("cannot restart %s: %s", name, m.Why)
}

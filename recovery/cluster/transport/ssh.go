package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kubecpr/kubecpr/recovery/fsys"
)

const (
	// defaultSSHTimeout bounds connecting plus the SSH handshake.
	defaultSSHTimeout = 15 * time.Second
	// keepaliveInterval is how often an idle connection is probed; a probe
	// unanswered within the dial timeout closes it, so a Run on a node that
	// vanished fails instead of hanging.
	keepaliveInterval = 15 * time.Second
	// stopWait is how long a cancelled Run waits for the remote side to
	// confirm the session closed before returning anyway.
	stopWait = 5 * time.Second
)

// SSHConfig says how to reach one node over SSH.
type SSHConfig struct {
	Node string // the node's name (default: Host)
	User string // the login user (required)
	Host string // address or host name (required)
	Port int    // default 22
	// IdentityFile is a private key file (~/ expanded). It must not be
	// accessible by group or others, and must not need a passphrase (use
	// the agent for such keys).
	IdentityFile string
	// UseAgent adds the keys of the SSH agent at $SSH_AUTH_SOCK.
	UseAgent bool
	// KnownHostsFiles are the known_hosts files the node's host key must be
	// in. Default: ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts.
	KnownHostsFiles []string
	// Sudo runs every command through `sudo -n --`, for a login user that is
	// not root; DialSSH checks that passwordless sudo works.
	Sudo bool
	// Timeout bounds connecting and the handshake (default 15s); it is also
	// how long a keepalive may go unanswered.
	Timeout time.Duration
}

// SSH is the transport of a node reached over SSH: one connection, a session
// per command.
type SSH struct {
	cfg    SSHConfig
	addr   string
	client *ssh.Client
	auth   *auth

	closeOnce sync.Once
	done      chan struct{}
}

var _ Transport = (*SSH)(nil)

// DialSSH connects to a node and authenticates. The node's host key must be
// in known_hosts: an unknown key fails with ErrUnknownHost, a different one
// with ErrHostKeyChanged, each message saying what to do. With cfg.Sudo,
// DialSSH also checks that `sudo -n true` works for the login user.
func DialSSH(ctx context.Context, cfg SSHConfig) (*SSH, error) {
	if cfg.Node == "" {
		cfg.Node = cfg.Host
	}
	if cfg.Host == "" {
		return nil, fmt.Errorf("%s: ssh: no host", cfg.Node)
	}
	if cfg.User == "" {
		return nil, fmt.Errorf("%s: ssh: no user to log in as", cfg.Node)
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultSSHTimeout
	}
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))

	keys, err := newHostKeys(cfg.Node, cfg.Host, cfg.Port, cfg.KnownHostsFiles)
	if err != nil {
		return nil, err
	}
	au, err := newAuth(cfg)
	if err != nil {
		return nil, err
	}
	clientCfg := &ssh.ClientConfig{
		User:              cfg.User,
		Auth:              []ssh.AuthMethod{au.method()},
		HostKeyCallback:   keys.check,
		HostKeyAlgorithms: keys.algorithms(),
	}

	d := net.Dialer{Timeout: cfg.Timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		au.close()
		return nil, fmt.Errorf("%s: connecting to %s: %w", cfg.Node, addr, err)
	}
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, clientCfg)
	cancelled := !stop()
	switch {
	case keys.refused != nil:
		err = keys.refused
	case cancelled:
		err = fmt.Errorf("%s: ssh handshake with %s: %w", cfg.Node, addr, ctx.Err())
	case err != nil && strings.Contains(err.Error(), "unable to authenticate"):
		err = fmt.Errorf("%s: %s@%s refused our keys (%w); check that the key is in the node's ~%s/.ssh/authorized_keys",
			cfg.Node, cfg.User, addr, err, cfg.User)
	case err != nil:
		err = fmt.Errorf("%s: ssh handshake with %s: %w", cfg.Node, addr, err)
	}
	if err != nil {
		conn.Close()
		au.close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})

	s := &SSH{cfg: cfg, addr: addr, client: ssh.NewClient(c, chans, reqs), auth: au, done: make(chan struct{})}
	go s.keepalive()
	if cfg.Sudo {
		var stderr bytes.Buffer
		if err := s.run(ctx, []string{"true"}, nil, nil, &stderr); err != nil {
			s.Close()
			var exit *ExitError
			if errors.As(err, &exit) {
				err = fmt.Errorf("exit status %d", exit.Code)
			}
			return nil, fmt.Errorf("%s: sudo is set but `sudo -n true` failed for %s (%v: %s): "+
				"give %s passwordless sudo (NOPASSWD in sudoers) or log in as root",
				cfg.Node, cfg.User, err, strings.TrimSpace(stderr.String()), cfg.User)
		}
	}
	return s, nil
}

// Name returns the node's name.
func (s *SSH) Name() string { return s.cfg.Node }

// Run runs argv on the node (see Transport.Run). The command line, for the
// user's login shell (which must be a POSIX shell), is ShellJoin of a small
// sh wrapper and argv, prefixed with `sudo -n --` when the config says so.
// The wrapper sends the command SIGTERM when the session's input ends: when
// ctx is cancelled, or when the connection to the node is lost.
func (s *SSH) Run(ctx context.Context, argv []string, stdout, stderr io.Writer) error {
	return s.run(ctx, argv, nil, stdout, stderr)
}

// watchdog runs "$@" in the background and stops it with SIGTERM when its
// stdin (fd 3, the SSH channel) reaches EOF — when Run is cancelled and
// closes it, or when the connection is lost — or when the wrapper itself
// gets TERM, HUP or INT. It exits with the command's status (128+N when
// killed by signal N, as shells report it). The wrapper's own stderr goes to
// /dev/null (dash reports a killed job there), the command's to fd 4, the
// session's stderr.
//
// A signal request alone cannot stop a command: OpenSSH refuses to deliver
// signals to sessions without privilege separation, which is every root
// login ("session signalling requires privilege separation"), and closing
// the channel only closes the command's pipes, which a command that does not
// write (sleep, or kubecpr waiting for etcd) never notices.
const watchdog = `exec 3<&0 </dev/null 4>&2 2>/dev/null
"$@" 2>&4 3<&- 4>&- &
p=$!
(while read -r _ <&3; do :; done; kill -TERM "$p") >/dev/null 4>&- &
w=$!
exec 3<&-
trap 'kill -TERM "$p" 2>/dev/null' TERM HUP INT
while :; do
	wait "$p"
	s=$?
	kill -0 "$p" 2>/dev/null || break
done
kill "$w" 2>/dev/null
exit "$s"`

// command is the line the remote login shell runs.
func (s *SSH) command(argv []string) string {
	if s.cfg.Sudo {
		return "sudo -n -- " + ShellJoin(argv)
	}
	return ShellJoin(argv)
}

// run runs argv with stdin as its input; without stdin, argv runs under the
// watchdog, fed by a pipe that is closed to stop it.
func (s *SSH) run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return fmt.Errorf("%s: run: empty command", s.cfg.Node)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s: %w", s.cfg.Node, describeArgv(argv), err)
	}
	line := argv
	var stop func() // ends the watchdog's stdin
	if stdin == nil {
		line = append([]string{"sh", "-c", watchdog, "kubecpr-run"}, argv...)
		r, w := io.Pipe()
		stdin, stop = r, func() { w.Close() }
		defer stop()
	}
	sess, err := s.client.NewSession()
	if err != nil {
		return fmt.Errorf("%s: opening an ssh session on %s: %w", s.cfg.Node, s.addr, err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, stderr
	if err := sess.Start(s.command(line)); err != nil {
		return fmt.Errorf("%s: starting %s: %w", s.cfg.Node, describeArgv(argv), err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err := <-done:
		return s.waitError(argv, err)
	case <-ctx.Done():
	}
	// A signal for servers that deliver them (a non-root login) and EOF to
	// the watchdog, which give the command stopWait to end by itself; then
	// (at once for a command fed by a caller's stdin, which has no
	// watchdog) close the channel and stop waiting.
	sess.Signal(ssh.SIGTERM)
	if stop != nil {
		stop()
		select {
		case <-done:
			return fmt.Errorf("%s: %s: stopped: %w", s.cfg.Node, describeArgv(argv), ctx.Err())
		case <-time.After(stopWait):
		}
	}
	sess.Close()
	select {
	case <-done:
	case <-time.After(stopWait):
	}
	return fmt.Errorf("%s: %s: stopped: %w", s.cfg.Node, describeArgv(argv), ctx.Err())
}

func (s *SSH) waitError(argv []string, err error) error {
	var exit *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit):
		return &ExitError{Node: s.cfg.Node, Code: exit.ExitStatus()}
	case errors.As(err, &missing):
		return fmt.Errorf("%s: %s: the connection to %s ended without an exit status", s.cfg.Node, describeArgv(argv), s.addr)
	default:
		return fmt.Errorf("%s: %s: %w", s.cfg.Node, describeArgv(argv), err)
	}
}

// Upload streams data to a temporary file beside remotePath, then, only once
// every byte was read and arrived, checks its size, sets mode, fsyncs it,
// renames it over remotePath and fsyncs the directory. The two steps are two
// sessions so that a read error on our side can never install a truncated
// file. Needs a POSIX sh, cat, wc, chmod, mv and sync on the node; with Sudo,
// all of it runs through sudo.
func (s *SSH) Upload(ctx context.Context, data io.Reader, remotePath string, mode os.FileMode) error {
	if !path.IsAbs(remotePath) {
		return fmt.Errorf("%s: upload: %q is not an absolute path", s.cfg.Node, remotePath)
	}
	if mode == 0 {
		mode = 0o600
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	dir := path.Dir(remotePath)
	tmp := path.Join(dir, "."+path.Base(remotePath)+".kubecpr-upload-"+hex.EncodeToString(rnd[:]))
	fail := func(step string, err error, stderr *lockedBuffer) error {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return fmt.Errorf("%s: upload %s: %s: %w", s.cfg.Node, remotePath, step, err)
	}

	// Step 1: the bytes, into a new file only we can read (set -C: never
	// through something already there).
	counted := &countingReader{r: data}
	var stderr lockedBuffer // a stopped session's copier may still write to it
	pidFile := tmp + ".pid"
	write := "umask 077; set -C; echo $$ > " + ShellQuote(pidFile) + "; exec cat > " + ShellQuote(tmp)
	err := s.run(ctx, []string{"sh", "-c", write}, counted, nil, &stderr)
	n, readErr := counted.result()
	if err != nil || readErr != nil {
		if readErr != nil {
			err = fmt.Errorf("reading the data: %w", readErr)
		}
		// The writer may still be starting or draining on the node after
		// the session was closed: wait (bounded) for its pid file and for
		// it to end, then remove what it wrote.
		clean := fmt.Sprintf(`tmp=%s; pf=%s; i=0
while [ ! -e "$pf" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
p=$(cat "$pf" 2>/dev/null); i=0
while [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
rm -f -- "$tmp" "$pf"`, ShellQuote(tmp), ShellQuote(pidFile))
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout+15*time.Second)
		s.run(cleanup, []string{"sh", "-c", clean}, nil, nil, nil)
		cancel()
		return fail("writing "+tmp, err, &stderr)
	}

	// Step 2: check, chmod, fsync, rename, fsync the directory. `sync FILE`
	// needs coreutils 8.24; older systems fall back to a global sync.
	stderr.Reset()
	install := fmt.Sprintf(`tmp=%s; dst=%s; dir=%s
trap 'rm -f -- "$tmp" "$tmp.pid"' EXIT
n=$(wc -c < "$tmp" | tr -d ' ') || exit 1
if [ "$n" != %d ]; then echo "received $n bytes, sent %d" >&2; exit 1; fi
if [ -L "$dst" ]; then echo "refusing to replace the symlink $dst with a regular file" >&2; exit 1; fi
if [ -e "$dst" ] && [ ! -f "$dst" ]; then echo "refusing to replace $dst, not a regular file" >&2; exit 1; fi
chmod %04o "$tmp" || exit 1
sync "$tmp" 2>/dev/null || sync
mv -f -- "$tmp" "$dst" || exit 1
sync "$dir" 2>/dev/null || sync
`, ShellQuote(tmp), ShellQuote(remotePath), ShellQuote(dir), n, n, fsys.UnixMode(mode))
	if err := s.run(ctx, []string{"sh", "-c", install}, nil, nil, &stderr); err != nil {
		return fail("installing", err, &stderr)
	}
	return nil
}

// Close closes the connection (and the agent socket).
func (s *SSH) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.client.Close()
		s.auth.close()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}

// keepalive probes the connection while it is open and closes it when a
// probe is not answered in time.
func (s *SSH) keepalive() {
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		replied := make(chan error, 1)
		go func() {
			_, _, err := s.client.SendRequest("keepalive@openssh.com", true, nil)
			replied <- err
		}()
		select {
		case <-s.done:
			return
		case err := <-replied:
			if err != nil {
				s.client.Close()
				return
			}
		case <-time.After(s.cfg.Timeout):
			s.client.Close()
			return
		}
	}
}

// countingReader counts bytes and keeps the reader's first error, so Upload
// can tell "the data could not be read" from "the data was sent". The ssh
// package reads it from its own goroutine, which may outlive a failed Run:
// hence the lock.
type countingReader struct {
	r   io.Reader
	mu  sync.Mutex
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// result is the count so far and the first read error.
func (c *countingReader) result() (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.err
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader in two
// goroutines (an ssh session's stderr copier and the caller).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/kubecpr/kubecpr/recovery/cluster/transport/sshtest"
)

// config is an SSHConfig for srv with its identity and known_hosts.
func config(srv *sshtest.Server) SSHConfig {
	return SSHConfig{
		Node: "node-1", User: srv.User, Host: srv.Host, Port: srv.Port,
		IdentityFile: srv.IdentityFile, KnownHostsFiles: []string{srv.KnownHostsFile},
		Timeout: 10 * time.Second,
	}
}

// dialAndRun dials with cfg and runs `true`.
func dialAndRun(t *testing.T, cfg SSHConfig) error {
	t.Helper()
	s, err := DialSSH(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Run(context.Background(), []string{"true"}, nil, nil)
}

func TestHostKey(t *testing.T) {
	srv := sshtest.Start(t)
	hostPattern := knownhosts.Normalize(srv.Addr) // [127.0.0.1]:PORT
	otherEd25519, _ := sshtest.NewKey(t)
	otherKey, err := ssh.NewPublicKey(otherEd25519)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherECDSA, err := ssh.NewPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	line := func(pattern string, k ssh.PublicKey) string { return knownhosts.Line([]string{pattern}, k) }
	presented := ssh.FingerprintSHA256(srv.HostKey)

	tests := []struct {
		name       string
		knownHosts []string
		wantErr    error    // nil: connects
		wantText   []string // in the error message
	}{
		{name: "known key", knownHosts: []string{srv.HostKeyLine}},
		{name: "known key, hashed entry", knownHosts: []string{line(knownhosts.HashHostname(hostPattern), srv.HostKey)}},
		{name: "known key after a key of another type", knownHosts: []string{line(hostPattern, otherECDSA), srv.HostKeyLine}},
		{name: "empty known_hosts", knownHosts: nil, wantErr: ErrUnknownHost, wantText: []string{
			"node-1", presented, "ssh-keyscan -p " + strconv.Itoa(srv.Port) + " 127.0.0.1 >> ", "known_hosts", "never accepts"}},
		{name: "known for another port only", knownHosts: []string{line("[127.0.0.1]:1", srv.HostKey), line("127.0.0.1", srv.HostKey)},
			wantErr: ErrUnknownHost, wantText: []string{presented}},
		{name: "another key for this host:port", knownHosts: []string{line(hostPattern, otherKey)}, wantErr: ErrHostKeyChanged,
			wantText: []string{"node-1", presented, ssh.FingerprintSHA256(otherKey), "known_hosts:1", "do not proceed"}},
		{name: "a key of another type for this host:port", knownHosts: []string{line(hostPattern, otherECDSA)}, wantErr: ErrHostKeyChanged,
			wantText: []string{presented, ssh.FingerprintSHA256(otherECDSA), "do not proceed"}},
		{name: "revoked", knownHosts: []string{"@revoked * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(srv.HostKey))), srv.HostKeyLine},
			wantErr: ErrHostKeyChanged, wantText: []string{"revoked", "do not proceed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "known_hosts")
			content := strings.Join(tt.knownHosts, "\n")
			if content != "" {
				content += "\n"
			}
			if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := config(srv)
			cfg.KnownHostsFiles = []string{file}
			err := dialAndRun(t, cfg)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("want a connection, got %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			for _, s := range tt.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error does not say %q:\n%v", s, err)
				}
			}
			t.Logf("%v", err)
		})
	}
}

func TestKnownHostsFileMissing(t *testing.T) {
	cfg := SSHConfig{Node: "n", User: "root", Host: "127.0.0.1", Port: 1, IdentityFile: "/nonexistent",
		KnownHostsFiles: []string{filepath.Join(t.TempDir(), "nope")}}
	_, err := DialSSH(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "known_hosts") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("DialSSH = %v, want a missing known_hosts error", err)
	}
}

func TestIdentityFileMode(t *testing.T) {
	srv := sshtest.Start(t)
	key, err := os.ReadFile(srv.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mode   os.FileMode
		refuse bool
	}{
		{0o600, false},
		{0o400, false},
		{0o644, true},
		{0o640, true},
		{0o604, true},
		{0o660, true},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "id")
			if err := os.WriteFile(file, key, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tt.mode); err != nil {
				t.Fatal(err)
			}
			cfg := config(srv)
			cfg.IdentityFile = file
			err := dialAndRun(t, cfg)
			if !tt.refuse {
				if err != nil {
					t.Fatalf("want a connection, got %v", err)
				}
				return
			}
			want := []string{"node-1", file, "0" + strconv.FormatUint(uint64(tt.mode), 8), "chmod 600"}
			for _, s := range want {
				if err == nil || !strings.Contains(err.Error(), s) {
					t.Fatalf("error = %v, want one saying %q", err, s)
				}
			}
		})
	}
}

func TestIdentityFileProblems(t *testing.T) {
	srv := sshtest.Start(t)
	_, priv, err := newEd25519()
	if err != nil {
		t.Fatal(err)
	}
	protected, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	_, unauthorized := sshtest.NewKey(t)
	tests := []struct {
		name     string
		key      []byte
		wantText []string
	}{
		{"passphrase-protected", pem.EncodeToMemory(protected), []string{"passphrase", "ssh-add", "agent"}},
		{"not a key", []byte("hello\n"), []string{"not a private key"}},
		{"not authorized on the node", unauthorized, []string{"refused our keys", "authorized_keys"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "id")
			if err := os.WriteFile(file, tt.key, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := config(srv)
			cfg.IdentityFile = file
			err := dialAndRun(t, cfg)
			for _, s := range append(tt.wantText, "node-1") {
				if err == nil || !strings.Contains(err.Error(), s) {
					t.Fatalf("error = %v, want one saying %q", err, s)
				}
			}
			t.Logf("%v", err)
		})
	}
}

func TestAgent(t *testing.T) {
	srv := sshtest.Start(t)
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: srv.ClientKey}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				agent.ServeAgent(keyring, c)
			}()
		}
	}()

	cfg := config(srv)
	cfg.IdentityFile, cfg.UseAgent = "", true
	t.Run("agent holds the key", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", sock)
		if err := dialAndRun(t, cfg); err != nil {
			t.Fatalf("via the agent: %v", err)
		}
	})
	t.Run("no SSH_AUTH_SOCK", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", "")
		err := dialAndRun(t, cfg)
		if err == nil || !strings.Contains(err.Error(), "SSH_AUTH_SOCK is not set") {
			t.Fatalf("error = %v, want SSH_AUTH_SOCK is not set", err)
		}
	})
	t.Run("nothing to authenticate with", func(t *testing.T) {
		cfg := cfg
		cfg.UseAgent = false
		err := dialAndRun(t, cfg)
		if err == nil || !strings.Contains(err.Error(), "no way to authenticate") {
			t.Fatalf("error = %v, want no way to authenticate", err)
		}
	})
}

// TestSudo: with Sudo set, DialSSH proves passwordless sudo works, or says
// what to do. This machine may or may not have sudo; either way one of the
// two paths is checked against the real sshd.
func TestSudo(t *testing.T) {
	srv := sshtest.Start(t)
	cfg := config(srv)
	cfg.Sudo = true
	s, err := DialSSH(context.Background(), cfg)
	if _, lookErr := exec.LookPath("sudo"); lookErr != nil {
		if err == nil || !strings.Contains(err.Error(), "sudo -n true") || !strings.Contains(err.Error(), "NOPASSWD") {
			t.Fatalf("without sudo on the node: DialSSH = %v, want the sudo check to fail with advice", err)
		}
		t.Logf("no sudo here: %v", err)
		return
	}
	if err != nil {
		t.Fatalf("DialSSH with sudo: %v", err)
	}
	defer s.Close()
	var out strings.Builder
	if err := s.Run(context.Background(), []string{"id", "-u"}, &out, nil); err != nil || out.String() != "0\n" {
		t.Fatalf("id -u through sudo = %q, %v", out.String(), err)
	}
}

func TestDialErrors(t *testing.T) {
	srv := sshtest.Start(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	// A listener that accepts and never speaks: the handshake times out.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	silentPort := silent.Addr().(*net.TCPAddr).Port

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		edit     func(*SSHConfig)
		wantText []string
		wantIs   error
	}{
		{"nobody listening", context.Background(), func(c *SSHConfig) { c.Port = closedPort },
			[]string{"node-1", "connecting to 127.0.0.1:" + strconv.Itoa(closedPort), "refused"}, nil},
		{"handshake timeout", context.Background(), func(c *SSHConfig) { c.Port, c.Timeout = silentPort, 300*time.Millisecond },
			[]string{"node-1", "handshake"}, nil},
		{"cancelled", cancelled, func(*SSHConfig) {}, []string{"node-1"}, context.Canceled},
		{"no user", context.Background(), func(c *SSHConfig) { c.User = "" }, []string{"node-1", "no user"}, nil},
		{"no host", context.Background(), func(c *SSHConfig) { c.Host = "" }, []string{"node-1", "no host"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config(srv)
			tt.edit(&cfg)
			start := time.Now()
			s, err := DialSSH(tt.ctx, cfg)
			if err == nil {
				s.Close()
				t.Fatal("DialSSH succeeded")
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("DialSSH took %v", time.Since(start))
			}
			for _, s := range tt.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error does not say %q: %v", s, err)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error = %v, want %v", err, tt.wantIs)
			}
		})
	}
}

// TestRunAfterClose: a closed transport fails clearly instead of hanging.
func TestRunAfterClose(t *testing.T) {
	srv := sshtest.Start(t)
	s, err := DialSSH(context.Background(), config(srv))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Run(context.Background(), []string{"true"}, nil, nil); err == nil || !strings.Contains(err.Error(), "node-1") {
		t.Fatalf("Run after Close = %v, want an error naming the node", err)
	}
}

func newEd25519() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

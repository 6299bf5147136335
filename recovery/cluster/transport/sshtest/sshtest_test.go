package sshtest

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestStart(t *testing.T) {
	s := Start(t)
	if !banner(nil, s.Addr) {
		t.Fatalf("no SSH banner on %s", s.Addr)
	}
	if want := "127.0.0.1:" + strconv.Itoa(s.Port); s.Addr != want || s.Host != "127.0.0.1" {
		t.Errorf("Addr %q Host %q, want %q on 127.0.0.1", s.Addr, s.Host, want)
	}
	// known_hosts writes non-22 ports as [host]:port.
	if want := "[127.0.0.1]:" + strconv.Itoa(s.Port) + " ssh-ed25519 "; !strings.HasPrefix(s.HostKeyLine, want) {
		t.Errorf("HostKeyLine %q, want it to start with %q", s.HostKeyLine, want)
	}
	b, err := os.ReadFile(s.KnownHostsFile)
	if err != nil || string(b) != s.HostKeyLine+"\n" {
		t.Errorf("known_hosts = %q, %v", b, err)
	}
	for _, f := range []string{s.IdentityFile, s.AuthorizedKeysFile} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v, want 0600", f, err, st.Mode())
		}
	}
}

// TestSessionHome: a command runs with HOME in the test's directory, so
// root's login shell reads none of this machine's dotfiles (bash started
// by sshd reads ~/.bashrc), and a session costs what sshd costs.
func TestSessionHome(t *testing.T) {
	s := Start(t)
	b, err := os.ReadFile(s.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ssh.Dial("tcp", s.Addr, &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(s.HostKey),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.Output(`printf %s "$HOME"`)
	if err != nil || string(out) != s.Dir {
		t.Errorf("HOME in a session = %q (%v), want %q", out, err, s.Dir)
	}
}

// TestStopWithOpenConnection: a client a test forgot to close, even with a
// command running, does not keep the server (or the test) alive.
func TestStopWithOpenConnection(t *testing.T) {
	start := time.Now()
	var client *ssh.Client
	t.Run("leaky", func(t *testing.T) {
		s := Start(t)
		b, err := os.ReadFile(s.IdentityFile)
		if err != nil {
			t.Fatal(err)
		}
		signer, err := ssh.ParsePrivateKey(b)
		if err != nil {
			t.Fatal(err)
		}
		client, err = ssh.Dial("tcp", s.Addr, &ssh.ClientConfig{
			User:            s.User,
			Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback: ssh.FixedHostKey(s.HostKey),
		})
		if err != nil {
			t.Fatal(err)
		}
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := sess.Start("sleep 5"); err != nil {
			t.Fatal(err)
		}
	})
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stopping the server took %v", d)
	}
	if client != nil {
		if _, _, err := client.SendRequest("keepalive@openssh.com", true, nil); err == nil {
			t.Errorf("the connection is still alive after the server stopped")
		}
		client.Close()
	}
}

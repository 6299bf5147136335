package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// auth is how DialSSH authenticates: the identity file's key first, then the
// agent's keys, in one publickey method.
type auth struct {
	signers []ssh.Signer
	agent   agent.ExtendedAgent
	conn    io.Closer // the agent socket, closed with the transport
}

// newAuth loads the identity file and connects to the agent as cfg asks.
func newAuth(cfg SSHConfig) (*auth, error) {
	a := &auth{}
	if cfg.IdentityFile == "" && !cfg.UseAgent {
		return nil, fmt.Errorf("%s: no way to authenticate: set an identity file or use the SSH agent", cfg.Node)
	}
	if cfg.IdentityFile != "" {
		s, err := loadIdentity(cfg.Node, cfg.IdentityFile)
		if err != nil {
			return nil, err
		}
		a.signers = append(a.signers, s)
	}
	if cfg.UseAgent {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return nil, fmt.Errorf("%s: the SSH agent is to be used but SSH_AUTH_SOCK is not set: start one (eval \"$(ssh-agent)\"), add the key (ssh-add KEYFILE) and run kubecpr from that shell", cfg.Node)
		}
		conn, err := net.Dial("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("%s: connecting to the SSH agent at SSH_AUTH_SOCK=%s: %w", cfg.Node, sock, err)
		}
		a.agent, a.conn = agent.NewClient(conn), conn
	}
	return a, nil
}

// method is the publickey auth method over every key we have.
func (a *auth) method() ssh.AuthMethod {
	return ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
		if a.agent == nil {
			return a.signers, nil
		}
		fromAgent, err := a.agent.Signers()
		if err != nil {
			return nil, fmt.Errorf("listing the SSH agent's keys: %w", err)
		}
		return append(append([]ssh.Signer(nil), a.signers...), fromAgent...), nil
	})
}

func (a *auth) close() {
	if a.conn != nil {
		a.conn.Close()
	}
}

// loadIdentity reads a private key file as ssh does, refusing one others can
// read and one protected by a passphrase (kubecpr never prompts: it runs on
// many nodes at once).
func loadIdentity(node, path string) (ssh.Signer, error) {
	path, err := expandHome(path)
	if err != nil {
		return nil, fmt.Errorf("%s: identity file %s: %w", node, path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: identity file: %w", node, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: identity file: %w", node, err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s: identity file %s has mode %04o: a private key must not be accessible by group or others "+
			"(ssh refuses it too); fix it with: chmod 600 %s", node, path, perm, ShellQuote(path))
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: identity file %s: %w", node, path, err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return nil, fmt.Errorf("%s: identity file %s is protected by a passphrase, and kubecpr does not prompt for one: "+
			"load it into an SSH agent (eval \"$(ssh-agent)\"; ssh-add %s) and use the agent instead", node, path, ShellQuote(path))
	case err != nil:
		return nil, fmt.Errorf("%s: identity file %s is not a private key ssh can read: %w", node, path, err)
	}
	return signer, nil
}

package transport

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

var (
	// ErrUnknownHost is wrapped by the error of a dial to a node whose host
	// key is in none of the known_hosts files. kubecpr never accepts an
	// unknown key: the message says how to add it after checking it.
	ErrUnknownHost = errors.New("ssh host key unknown")
	// ErrHostKeyChanged is wrapped by the error of a dial to a node that
	// presented a key other than the one known_hosts holds for it (or a key
	// marked @revoked). The message says not to proceed.
	ErrHostKeyChanged = errors.New("ssh host key changed")
)

// hostKeys checks the key a node presents against known_hosts files, and
// keeps its refusal so DialSSH can return it as it is (the ssh package would
// bury it in "ssh: handshake failed: ...").
type hostKeys struct {
	node     string
	host     string
	port     int
	files    []string // read, in order
	addTo    string   // where the unknown-host message says to append
	callback ssh.HostKeyCallback
	refused  error
}

// newHostKeys reads the known_hosts files. With none given, it reads
// ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts, those that exist (none
// existing means every host is unknown). A file given explicitly must exist.
func newHostKeys(node, host string, port int, files []string) (*hostKeys, error) {
	h := &hostKeys{node: node, host: host, port: port}
	if len(files) == 0 {
		home, _ := os.UserHomeDir()
		user := filepath.Join(home, ".ssh", "known_hosts")
		h.addTo = user
		for _, f := range []string{user, "/etc/ssh/ssh_known_hosts"} {
			if _, err := os.Stat(f); err == nil {
				h.files = append(h.files, f)
			}
		}
	} else {
		for _, f := range files {
			f, err := expandHome(f)
			if err != nil {
				return nil, fmt.Errorf("%s: known_hosts file %s: %w", node, f, err)
			}
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("%s: known_hosts file: %w", node, err)
			}
			h.files = append(h.files, f)
		}
		h.addTo = h.files[0]
	}
	if len(h.files) == 0 {
		h.callback = func(string, net.Addr, ssh.PublicKey) error { return &knownhosts.KeyError{} }
		return h, nil
	}
	cb, err := knownhosts.New(h.files...)
	if err != nil {
		return nil, fmt.Errorf("%s: reading known_hosts: %w", node, err)
	}
	h.callback = cb
	return h, nil
}

func (h *hostKeys) addr() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

// check is the ssh.HostKeyCallback: a key known for this host passes;
// anything else is refused with ErrUnknownHost or ErrHostKeyChanged.
func (h *hostKeys) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := h.callback(hostname, remote, key)
	if err == nil {
		return nil
	}
	presented := key.Type() + " " + ssh.FingerprintSHA256(key)
	var keyErr *knownhosts.KeyError
	var revoked *knownhosts.RevokedError
	switch {
	case errors.As(err, &revoked):
		h.refused = fmt.Errorf("%s: %w: %s presented %s, which %s:%d marks @revoked; do not proceed",
			h.node, ErrHostKeyChanged, h.addr(), presented, revoked.Revoked.Filename, revoked.Revoked.Line)
	case errors.As(err, &keyErr) && len(keyErr.Want) == 0:
		h.refused = fmt.Errorf("%s: %w: %s presented %s, which is in no known_hosts file (%s); "+
			"kubecpr never accepts an unknown host key: check that fingerprint on the node "+
			"(ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub), then add it with: ssh-keyscan -p %d %s >> %s",
			h.node, ErrUnknownHost, h.addr(), presented, h.filesText(), keyFileKind(key),
			h.port, ShellQuote(h.host), ShellQuote(h.addTo))
	case errors.As(err, &keyErr):
		want := make([]string, len(keyErr.Want))
		for i, k := range keyErr.Want {
			want[i] = fmt.Sprintf("%s %s (%s:%d)", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line)
		}
		h.refused = fmt.Errorf("%s: %w: %s presented %s, but known_hosts expects %s; "+
			"do not proceed: this may be a man-in-the-middle attack. Only if the node was reinstalled, "+
			"check the new fingerprint on the node and replace the old entry (ssh-keygen -R %s -f %s)",
			h.node, ErrHostKeyChanged, h.addr(), presented, strings.Join(want, ", "),
			ShellQuote(knownhosts.Normalize(h.addr())), ShellQuote(keyErr.Want[0].Filename))
	default:
		h.refused = fmt.Errorf("%s: checking the host key of %s: %w", h.node, h.addr(), err)
	}
	return h.refused
}

func (h *hostKeys) filesText() string {
	if len(h.files) == 0 {
		return "none exists; looked for " + h.addTo + " and /etc/ssh/ssh_known_hosts"
	}
	return "read " + strings.Join(h.files, ", ")
}

// algorithms orders the host key algorithms so that the types known_hosts
// holds for this host come first, then every other supported one. The
// server then presents the key we know when it has one (as OpenSSH's client
// does), instead of another of its keys that would look like a changed key;
// a server that no longer has a key of a known type still presents one,
// which check refuses as changed.
func (h *hostKeys) algorithms() []string {
	var first []string
	err := h.callback(h.addr(), probeAddr(h.addr()), probeKey{})
	var keyErr *knownhosts.KeyError
	if errors.As(err, &keyErr) {
		for _, k := range keyErr.Want {
			for _, a := range algorithmsForKeyType(k.Key.Type()) {
				if !slices.Contains(first, a) {
					first = append(first, a)
				}
			}
		}
	}
	if len(first) == 0 {
		return nil // the ssh package's defaults
	}
	all := ssh.SupportedAlgorithms().HostKeys
	out := slices.Clone(first)
	for _, a := range all {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	// Keep only algorithms the ssh package supports (ssh-rsa with SHA-1,
	// for instance, is not among its defaults).
	return slices.DeleteFunc(out, func(a string) bool { return !slices.Contains(all, a) })
}

func algorithmsForKeyType(t string) []string {
	if t == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{t}
}

// keyFileKind names the host key file OpenSSH keeps a key type in.
func keyFileKind(key ssh.PublicKey) string {
	switch t := key.Type(); {
	case t == ssh.KeyAlgoRSA:
		return "rsa"
	case strings.HasPrefix(t, "ecdsa-"):
		return "ecdsa"
	case t == ssh.KeyAlgoED25519:
		return "ed25519"
	default:
		return "*"
	}
}

// probeKey is a key no known_hosts line can hold: checking it lists the
// keys known for a host (knownhosts.KeyError.Want).
type probeKey struct{}

func (probeKey) Type() string                        { return "kubecpr-probe" }
func (probeKey) Marshal() []byte                     { return []byte("\x00\x00\x00\x0dkubecpr-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key verifies nothing") }

// probeAddr is the remote address handed to the callback while probing.
type probeAddr string

func (probeAddr) Network() string  { return "tcp" }
func (a probeAddr) String() string { return string(a) }

// expandHome expands a leading ~/ to the user's home directory.
func expandHome(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return p, err
	}
	return filepath.Join(h, strings.TrimPrefix(p, "~")), nil
}

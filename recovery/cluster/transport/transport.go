// Package transport reaches the nodes of a cluster: it runs commands on one
// node and copies files to it, over SSH (golang.org/x/crypto/ssh, host keys
// checked against known_hosts) or locally for nodes given as a directory tree
// (`root:` in the inventory: rehearsals on copies, and the tests).
//
// It also holds the two helpers every many-node driver needs: PrefixWriter,
// which streams the output of N nodes to one place, each line whole and
// prefixed with its node's name, and FanOut, which runs a function on every
// node with a concurrency bound and reports every node's result.
package transport

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
)

// Transport runs commands on one node and copies files to it.
//
// Implementations are safe for concurrent use: several Runs may be in
// flight on one node at once (over SSH, up to the server's MaxSessions,
// 10 by OpenSSH's default).
type Transport interface {
	// Name is the node's name, used in output prefixes and errors.
	Name() string
	// Run runs argv on the node and streams its stdout and stderr (either
	// may be nil to discard it). Arguments reach the program verbatim: no
	// shell interprets them (over SSH they are quoted with ShellJoin). A
	// command that ran and failed returns an *ExitError carrying its exit
	// code; cancelling ctx stops the command and returns ctx's error.
	Run(ctx context.Context, argv []string, stdout, stderr io.Writer) error
	// Upload writes data to remotePath (absolute) on the node atomically: a
	// temporary file in the same directory, fsync, rename over the target,
	// fsync the directory. A failure at any point leaves the old file (or
	// none). Mode 0 means 0600. The target, if it exists, must be a regular
	// file.
	Upload(ctx context.Context, data io.Reader, remotePath string, mode os.FileMode) error
	// Close releases the connection to the node.
	Close() error
}

// ExitError is returned by Run when the command ran and exited non-zero.
// A command killed by a signal has Code 128+signal, as shells report it.
type ExitError struct {
	Node string // the node the command ran on
	Code int    // the exit status
}

// Error names the node and the exit status.
func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: command exited with status %d", e.Node, e.Code)
}

// ShellJoin quotes argv for a POSIX shell (sh, bash, dash, ksh, zsh) so that
// the shell passes every argument through verbatim: spaces, quotes, $, ;,
// globs and newlines included. It is how commands travel over SSH, whose
// remote side always hands the command line to the user's login shell.
func ShellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = ShellQuote(a)
	}
	return strings.Join(q, " ")
}

// ShellQuote quotes one word for a POSIX shell: left bare when it holds only
// characters no shell treats specially, otherwise in single quotes, each
// embedded single quote closing the quotes, escaped, and reopening them:
//
//	it's  →  'it'\''s'
func ShellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if strings.IndexFunc(s, unsafeRune) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// unsafeRune reports characters that need quoting. '=' is among them: a bare
// first word holding '=' would be taken for a variable assignment.
func unsafeRune(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return false
	case strings.ContainsRune("_-./:,@%+", r):
		return false
	}
	return true
}

// describeArgv is argv shortened for error messages: the program and, when
// there are more, an ellipsis. Arguments can be long (scripts) and are not
// what an operator needs to read first.
func describeArgv(argv []string) string {
	if len(argv) == 0 {
		return "(empty command)"
	}
	if len(argv) == 1 {
		return argv[0]
	}
	return argv[0] + " …"
}

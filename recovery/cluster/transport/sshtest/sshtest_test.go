package sshtest

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestStart(t *testing.T) {
	s := Start(t)
	if !banner(s.Addr) {
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

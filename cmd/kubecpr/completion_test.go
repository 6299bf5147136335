package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// completionScript writes `kubecpr completion SHELL` to a file.
func completionScript(t *testing.T, shell string) string {
	t.Helper()
	r := kubecpr(t, nil, "completion", shell)
	if r.code != 0 || r.stdout == "" {
		t.Fatalf("completion %s: exit %d\n%s", shell, r.code, r.stderr)
	}
	p := filepath.Join(t.TempDir(), "kubecpr."+shell)
	if err := os.WriteFile(p, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func shell(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// The completion functions call "kubecpr" as typed: the test binary.
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(kubecprBin(t))+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	script := completionScript(t, "bash")
	if out, err := shell(t, "bash", "-n", script); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	// Source it and complete, the way bash does on <TAB>.
	canary := filepath.Join(t.TempDir(), "ran")
	for _, tc := range []struct {
		name  string
		words []string // COMP_WORDS; the last is the word being completed
		want  []string // candidates that must be offered
		none  bool     // no candidates at all (bash falls back to files)
	}{
		{"commands", []string{"kubecpr", "ch"}, []string{"check", "check-expiration"}, false},
		{"subcommands", []string{"kubecpr", "timer", ""}, []string{"install", "remove", "renew"}, false},
		{"global flags", []string{"kubecpr", "--ro"}, []string{"--root"}, false},
		{"command flags", []string{"kubecpr", "check", "--text"}, []string{"--textfile"}, false},
		{"flags after a global flag", []string{"kubecpr", "--root", "/tmp", "timer", "install", "--renew"}, []string{"--renew-within"}, false},
		{"shells", []string{"kubecpr", "completion", ""}, []string{"bash", "zsh", "fish"}, false},
		{"after an argument", []string{"kubecpr", "completion", "bash", ""}, nil, true},
		{"nothing typed is run", []string{"kubecpr", "$(touch " + canary + ")", "`touch " + canary + "`"}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			quoted := make([]string, len(tc.words))
			for i, w := range tc.words {
				quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
			}
			prog := "source " + script + "\n" +
				"COMP_WORDS=(" + strings.Join(quoted, " ") + ")\n" +
				"COMP_CWORD=" + strconv.Itoa(len(tc.words)-1) + "\n" +
				"_kubecpr_complete\n" +
				`printf '%s\n' "${COMPREPLY[@]}"` + "\n"
			out, err := shell(t, "bash", "-c", prog)
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			got := strings.Fields(out)
			if tc.none && len(got) != 0 {
				t.Errorf("candidates %q, want none", got)
			}
			for _, w := range tc.want {
				if !contains(got, w) {
					t.Errorf("candidates %q lack %q", got, w)
				}
			}
			for _, g := range got {
				if strings.Contains(g, "Usage") || strings.Contains(g, "Incorrect") {
					t.Errorf("an error message became candidates: %q", got)
				}
			}
		})
	}
	if _, err := os.Stat(canary); err == nil {
		t.Errorf("completing a word ran it: %s exists", canary)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestZshCompletion(t *testing.T) {
	script := completionScript(t, "zsh")
	data, _ := os.ReadFile(script)
	if !strings.HasPrefix(string(data), "#compdef kubecpr\n") || !strings.Contains(string(data), completionFlag) {
		t.Errorf("zsh script:\n%s", data)
	}
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Logf("zsh is not installed: the zsh script is NOT syntax-checked on this host")
		return
	}
	if out, err := shell(t, "zsh", "-n", script); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
}

func TestFishCompletion(t *testing.T) {
	script := completionScript(t, "fish")
	data, _ := os.ReadFile(script)
	for _, cmd := range newApp().Commands {
		if cmd.Hidden {
			if strings.Contains(string(data), "-a '"+cmd.Name) {
				t.Errorf("hidden command %s offered", cmd.Name)
			}
			continue
		}
		if !strings.Contains(string(data), "complete -r -c kubecpr -n '__fish_kubecpr_no_subcommand' -a '"+cmd.Name) {
			t.Errorf("fish completion lacks the command %s", cmd.Name)
		}
	}
	for _, flag := range []string{"-l root", "-l textfile", "-l renew-within"} {
		if !strings.Contains(string(data), flag) {
			t.Errorf("fish completion lacks %q", flag)
		}
	}
	if _, err := exec.LookPath("fish"); err != nil {
		t.Logf("fish is not installed: the fish script is NOT syntax-checked on this host")
		return
	}
	if out, err := shell(t, "fish", "--no-execute", script); err != nil {
		t.Fatalf("fish --no-execute: %v\n%s", err, out)
	}
}

func TestCompletionRefusals(t *testing.T) {
	for _, args := range [][]string{{"completion"}, {"completion", "powershell"}, {"completion", "bash", "zsh"}} {
		r := kubecpr(t, nil, args...)
		if r.code != ExitFailed || !strings.Contains(r.stderr, "bash, zsh or fish") {
			t.Errorf("%v: exit %d, want %d\n%s", args, r.code, ExitFailed, r.stderr)
		}
	}
}

func TestManPage(t *testing.T) {
	r := kubecpr(t, nil, "man")
	if r.code != 0 {
		t.Fatalf("man: exit %d\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, ".TH kubecpr 1") || !strings.Contains(r.stdout, ".SH NAME") {
		t.Errorf("not a section 1 man page:\n%.400s", r.stdout)
	}
	for _, cmd := range newApp().Commands {
		if !cmd.Hidden && !strings.Contains(r.stdout, cmd.Name) {
			t.Errorf("man page lacks %s", cmd.Name)
		}
	}
	if man, err := exec.LookPath("man"); err == nil {
		p := filepath.Join(t.TempDir(), "kubecpr.1")
		if err := os.WriteFile(p, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, man, "-l", p)
		cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=100")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "kubecpr") {
			t.Errorf("man -l: %v\n%.400s", err, out)
		}
	}
}

// A completion request stays last, where cli/v2 looks for it, wherever
// normalizeArgs moves the flags before it.
func TestCompletionArgs(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"kubecpr", "backup", "restore", "ID", completionFlag}, []string{"kubecpr", "backup", "restore", "ID", completionFlag}},
		{[]string{"kubecpr", "check", "--root", "/r", completionFlag}, []string{"kubecpr", "--root", "/r", "check", completionFlag}},
		{[]string{"kubecpr", "check", "--root", "/r"}, []string{"kubecpr", "--root", "/r", "check"}},
		{[]string{"kubecpr", "--", completionFlag}, []string{"kubecpr", "--", completionFlag}},
	} {
		if diff := cmp.Diff(tc.want, completionArgs(app, tc.in)); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.in, diff)
		}
	}
}

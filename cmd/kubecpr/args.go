package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// normalizeArgs puts flags where urfave/cli looks for them, so that they
// work wherever an operator types them, as with kubectl and kubeadm:
//
//	kubecpr check --root DIR            (a global flag after the command)
//	kubecpr backup restore ID --dry-run (a flag after an argument)
//
// Go's flag parsing stops at the first argument, so without this a flag
// after an argument would be taken as another argument and silently
// ignored: a "--dry-run" that restores for real. Each flag is moved to the
// deepest command level that defines it (the app's level for global
// flags); a flag no level defines is moved too, so that cli rejects it
// instead of ignoring it. A flag's value travels with it. Everything after
// "--" stays an argument.
func normalizeArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	type level struct {
		name  string // command name ("" for the app)
		flags []cli.Flag
		subs  []*cli.Command
		out   []string
	}
	levels := []*level{{flags: withHelp(app.Flags, app.Version != ""), subs: app.Commands}}
	var positionals, tail []string
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		tok := rest[i]
		if tok == "--" {
			tail = append([]string{"--"}, rest[i+1:]...)
			break
		}
		if len(tok) > 2 && tok[0] == '-' && tok[1] != '-' && !strings.Contains(tok, "=") {
			// -ojson, as kubectl takes it: a one-letter flag with its
			// value attached, when no flag has the whole name.
			if split := splitShort(levels[len(levels)-1].flags, levels[0].flags, tok); split != nil {
				tok = split[0] + "=" + split[1]
			}
		}
		if len(tok) > 1 && tok[0] == '-' {
			name, hasValue := flagName(tok)
			target, f := levels[len(levels)-1], cli.Flag(nil)
			for j := len(levels) - 1; j >= 0; j-- {
				if g := findFlag(levels[j].flags, name); g != nil {
					target, f = levels[j], g
					break
				}
			}
			target.out = append(target.out, tok)
			if f != nil && !hasValue && takesValue(f) && i+1 < len(rest) {
				i++
				target.out = append(target.out, rest[i])
			}
			continue
		}
		if len(positionals) == 0 {
			if sub := findCommand(levels[len(levels)-1].subs, tok); sub != nil {
				levels = append(levels, &level{name: tok, flags: withHelp(sub.Flags, false), subs: sub.Subcommands})
				continue
			}
		}
		positionals = append(positionals, tok)
	}
	out := []string{args[0]}
	for i, l := range levels {
		if i > 0 {
			out = append(out, l.name)
		}
		out = append(out, l.out...)
	}
	out = append(out, positionals...)
	return append(out, tail...)
}

// splitShort splits "-ojson" into "-o" and "json" when -o is a flag that
// takes a value (of the command, or the app) and "ojson" names no flag.
func splitShort(cmd, app []cli.Flag, tok string) []string {
	name := tok[1:]
	if findFlag(cmd, name) != nil || findFlag(app, name) != nil {
		return nil
	}
	short := name[:1]
	for _, flags := range [][]cli.Flag{cmd, app} {
		if f := findFlag(flags, short); f != nil && takesValue(f) {
			return []string{"-" + short, name[1:]}
		}
	}
	return nil
}

func flagName(tok string) (name string, hasValue bool) {
	name = strings.TrimLeft(tok, "-")
	if k, _, ok := strings.Cut(name, "="); ok {
		return k, true
	}
	return name, false
}

func findFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

func takesValue(f cli.Flag) bool {
	if g, ok := f.(*cli.GenericFlag); ok {
		// A value that is a boolean flag when given alone (--renew-ca)
		// takes its value only as --flag=VALUE.
		if b, ok := g.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			return false
		}
	}
	if d, ok := f.(cli.DocGenerationFlag); ok {
		return d.TakesValue()
	}
	return false
}

// withHelp adds the flags cli adds by itself (help, and version on the app).
func withHelp(flags []cli.Flag, version bool) []cli.Flag {
	out := append([]cli.Flag{&cli.BoolFlag{Name: "help", Aliases: []string{"h"}}}, flags...)
	if version {
		out = append(out, &cli.BoolFlag{Name: "version", Aliases: []string{"v"}})
	}
	return out
}

// refuseStrayArgs makes every command that takes no arguments refuse them:
// "kubecpr run kubeconfigs" must not run every stage.
func refuseStrayArgs(cmds []*cli.Command) {
	for _, c := range cmds {
		refuseStrayArgs(c.Subcommands)
		if c.Action == nil || c.ArgsUsage != "" || c.Name == "help" {
			continue
		}
		before := c.Before
		c.Before = func(ctx *cli.Context) error {
			if ctx.NArg() > 0 {
				return withCode(ExitFailed, fmt.Errorf("%s takes no arguments, got %q: flags are written --name value (see kubecpr %s --help)",
					ctx.Command.FullName(), ctx.Args().Slice(), ctx.Command.FullName()))
			}
			if before != nil {
				return before(ctx)
			}
			return nil
		}
	}
}

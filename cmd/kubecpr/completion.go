package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// completionFlag is the flag a shell appends to ask cli/v2 for the words
// that may follow (cli answers instead of running anything).
const completionFlag = "--generate-bash-completion"

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: "bash:  source <(kubecpr completion bash), or save it as /etc/bash_completion.d/kubecpr\n" +
			"zsh:   kubecpr completion zsh > \"${fpath[1]}/_kubecpr\" (or source <(kubecpr completion zsh) after compinit)\n" +
			"fish:  kubecpr completion fish > ~/.config/fish/completions/kubecpr.fish\n" +
			"bash and zsh ask kubecpr itself (" + completionFlag + "), so they follow the commands and flags\n" +
			"of the kubecpr that answers; the fish script is a snapshot of this kubecpr's commands and flags.",
		BashComplete: func(c *cli.Context) {
			if c.NArg() == 0 {
				fmt.Fprintln(c.App.Writer, "bash\nzsh\nfish")
			}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitFailed, fmt.Errorf("completion takes one argument, the shell: bash, zsh or fish (got %q)", c.Args().Slice()))
			}
			var script string
			switch sh := c.Args().First(); sh {
			case "bash":
				script = bashCompletion
			case "zsh":
				script = zshCompletion
			case "fish":
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return withCode(ExitFailed, err)
				}
				script = s
			default:
				return withCode(ExitFailed, fmt.Errorf("completion %q: want bash, zsh or fish", sh))
			}
			_, err := fmt.Fprint(c.App.Writer, script)
			return err
		},
	}
}

// manCommand prints the man page (`make man` writes it to docs/kubecpr.1).
// Hidden: it is for packaging, not for operators.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the man page (roff), section 1",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return withCode(ExitFailed, err)
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
}

// completionArgs is normalizeArgs for a command line that may end with a
// shell's completion request: the request stays last, where cli/v2 looks
// for it. Without this, normalizeArgs would move it before the arguments
// ("backup restore ID --generate-bash-completion" → "... --generate-bash-completion ID"),
// cli would not see a completion request and would print a usage error
// into the completions.
func completionArgs(app *cli.App, args []string) []string {
	if n := len(args); n > 1 && args[n-1] == completionFlag {
		return append(normalizeArgs(app, args[:n-1]), completionFlag)
	}
	return normalizeArgs(app, args)
}

// bashCompletion asks kubecpr for the candidates. The words typed so far
// are passed as arguments, never through eval, so nothing on the command
// line is expanded or run by completing it.
var bashCompletion = strings.ReplaceAll(`# bash completion for kubecpr                             -*- shell-script -*-
# source <(kubecpr completion bash), or save as /etc/bash_completion.d/kubecpr

_kubecpr_complete() {
    local cur words cword
    if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then
        _get_comp_words_by_ref -n =: cur words cword
    else
        cur=${COMP_WORDS[COMP_CWORD]}
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
    fi
    local prog=${words[0]/#\~/$HOME}
    local -a args=("${words[@]:1:cword-1}")
    if [[ $cur == -* ]]; then
        args+=("$cur")
    fi
    local opts
    opts=$("$prog" "${args[@]}" @FLAG@ 2>/dev/null) || opts=
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    if declare -F __ltrim_colon_completions >/dev/null 2>&1; then
        __ltrim_colon_completions "$cur"
    fi
    return 0
}

complete -o bashdefault -o default -F _kubecpr_complete kubecpr
`, "@FLAG@", completionFlag)

// zshCompletion does the same for zsh's completion system.
var zshCompletion = strings.ReplaceAll(`#compdef kubecpr
# zsh completion for kubecpr
# kubecpr completion zsh > "${fpath[1]}/_kubecpr", or source <(kubecpr completion zsh) after compinit

_kubecpr() {
    local -a opts args
    local cur=${words[CURRENT]}
    args=("${(@)words[2,CURRENT-1]}")
    if [[ $cur == -* ]]; then
        args+=("$cur")
    fi
    opts=("${(@f)$(${~words[1]} "${(@)args}" @FLAG@ 2>/dev/null)}")
    opts=("${(@)opts:#}")
    if (( ${#opts} )); then
        _describe 'kubecpr' opts
    else
        _files
    fi
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _kubecpr "$@"
else
    compdef _kubecpr kubecpr
fi
`, "@FLAG@", completionFlag)

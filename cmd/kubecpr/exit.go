package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/backup"
	"github.com/kubecpr/kubecpr/recovery/journal"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
)

// Exit codes: a stable, documented table (docs/exit-codes.md). Never
// renumber; only add.
const (
	ExitOK           = 0 // success; check: every certificate ok
	ExitExpiring     = 1 // check: something expires within --warn
	ExitExpired      = 2 // check: something expired, missing or invalid
	ExitFailed       = 3 // the tool could not run: bad flags, unknown layout, unreadable input
	ExitLocked       = 4 // another kubecpr run holds the node lock
	ExitJournal      = 5 // the journal is damaged before its last record
	ExitStageFailed  = 6 // a stage failed after changes began: resume or rollback
	ExitPrecondition = 7 // refused before any change: expired CA, missing CA key, no space, read-only
	ExitExternalCA   = 8 // external CA: CSRs were written and must be signed, then run again
	ExitInterrupted  = 130
)

// codedError carries an exit code to main.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// silentExit reports an exit code after the command already said why.
type silentExit struct{ code int }

func (e *silentExit) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func exitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ce *codedError
	var se *silentExit
	var held *journal.HeldError
	var treeHeld *journal.TreeHeldError
	var space *backup.SpaceError
	var pre *pipeline.PreconditionError
	var ext *pipeline.ExternalCAError
	var notOwn *journal.NotOwnLockError
	var badState *node.StateDirError
	switch {
	case errors.As(err, &se):
		return se.code
	case errors.As(err, &ce):
		return ce.code
	case errors.As(err, &held), errors.As(err, &treeHeld):
		return ExitLocked
	case errors.Is(err, journal.ErrCorrupt):
		return ExitJournal
	case errors.As(err, &ext):
		return ExitExternalCA
	case errors.As(err, &space), errors.As(err, &pre), errors.As(err, &notOwn), errors.As(err, &badState):
		return ExitPrecondition
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	var stage *pipeline.StageError
	if errors.As(err, &stage) {
		return ExitStageFailed
	}
	if _, ok := err.(cli.ExitCoder); ok {
		return err.(cli.ExitCoder).ExitCode()
	}
	return ExitFailed
}

package service

import (
	"context"
	"sync"
)

// Fake records restarts; for tests of code that takes a Manager.
type Fake struct {
	mu       sync.Mutex
	Restarts []string
	Err      error
	// StateValue and LogLines are what State and Logs return.
	StateValue string
	LogLines   string
}

func (f *Fake) State(context.Context, string) string { return f.StateValue }

func (f *Fake) Logs(context.Context, string, int) string { return f.LogLines }

var _ Manager = (*Fake)(nil)

func (f *Fake) Describe() string { return "fake" }

func (f *Fake) Restart(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Restarts = append(f.Restarts, name)
	return f.Err
}

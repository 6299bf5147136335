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
}

var _ Manager = (*Fake)(nil)

func (f *Fake) Describe() string { return "fake" }

func (f *Fake) Restart(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Restarts = append(f.Restarts, name)
	return f.Err
}

// Package parsecache remembers, for the life of one process, what parsing
// a file's bytes gave: a run reads the same kubeconfigs and private keys in
// each stage's plan and again at apply time, and decoding them (the
// kubeconfig codec, an RSA key's validation and precomputation) is most of
// a run's CPU after start-up. Entries are keyed by the bytes' sha256, so a
// file that changed is parsed again; nothing is written anywhere.
package parsecache

import (
	"crypto/sha256"
	"sync"
)

// max bounds a cache: when full it starts over (a run holds a few dozen).
const max = 512

// Cache maps file contents to their parsed value.
type Cache[T any] struct {
	mu sync.Mutex
	m  map[[32]byte]T
}

// Get returns parse(data), parsing only data not seen before. Errors are
// not remembered. Callers must treat the value as shared: copy before
// changing it.
func (c *Cache[T]) Get(data []byte, parse func([]byte) (T, error)) (T, error) {
	sum := sha256.Sum256(data)
	c.mu.Lock()
	v, ok := c.m[sum]
	c.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := parse(data)
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= max {
		c.m = map[[32]byte]T{}
	}
	c.m[sum] = v
	c.mu.Unlock()
	return v, nil
}

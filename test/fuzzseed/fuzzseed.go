// Package fuzzseed is what the fuzz tests share: seeds from the module's
// top-level testdata/ (fuzz-seeds/<kind>/ as they are, fuzz/<FuzzName>/ in
// Go's corpus format) and a bound on time and allocation per input.
package fuzzseed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Bounded runs fn and fails when it allocates without bound; when fn does
// not return within a time limit, the process panics (a hang has no other
// way out), which the fuzzer reports as a crash with the input.
func Bounded(t *testing.T, what string, fn func()) {
	t.Helper()
	const limit = 10 * time.Second
	const maxAlloc = 256 << 20
	timer := time.AfterFunc(limit, func() { panic(fmt.Sprintf("%s did not return within %v", what, limit)) })
	before := heapAllocated()
	fn()
	timer.Stop()
	if n := heapAllocated() - before; n > maxAlloc {
		t.Fatalf("%s allocated %d MiB", what, n>>20)
	}
}

// heapAllocated is the cumulative count of bytes allocated on the heap.
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// AddSeeds seeds f from the module's top-level testdata (the
// layout the project keeps its corpora in; Go itself only reads the
// package's own testdata/fuzz): every file of testdata/fuzz-seeds/<kind>/
// as it is, and every entry of testdata/fuzz/<FuzzName>/ in Go's corpus
// format. "@KEY@" in a seed stands for "PRIVATE KEY". A missing seed
// directory fails the test: a fuzz target that lost its corpus says so.
func AddSeeds(f *testing.F, kind string) {
	f.Helper()
	td := ModuleTestdata(f)
	add := func(b []byte) {
		f.Add(bytes.ReplaceAll(b, []byte("@KEY@"), []byte("PRIVATE"+" KEY")))
	}
	seeds, err := filepath.Glob(filepath.Join(td, "fuzz-seeds", kind, "*"))
	if err != nil {
		f.Fatal(err)
	}
	n := 0
	for _, p := range seeds {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
		n++
	}
	if n == 0 {
		f.Fatalf("no seeds in %s", filepath.Join(td, "fuzz-seeds", kind))
	}
	corpus, _ := filepath.Glob(filepath.Join(td, "fuzz", f.Name(), "*"))
	for _, p := range corpus {
		raw, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		b, err := parseCorpusEntry(raw)
		if err != nil {
			f.Fatalf("%s: %v", p, err)
		}
		add(b)
	}
}

// parseCorpusEntry decodes a one-value []byte entry in Go's corpus format.
func parseCorpusEntry(raw []byte) ([]byte, error) {
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		return nil, errors.New(`not a Go fuzz corpus entry ("go test fuzz v1" and one value)`)
	}
	v := lines[1]
	if !strings.HasPrefix(v, "[]byte(") || !strings.HasSuffix(v, ")") {
		return nil, fmt.Errorf("value %.40q is not []byte(...)", v)
	}
	s, err := strconv.Unquote(v[len("[]byte(") : len(v)-1])
	if err != nil {
		return nil, fmt.Errorf("value: %w", err)
	}
	return []byte(s), nil
}

// ModuleTestdata is the module's top-level testdata directory: go test runs
// in the package directory, so walk up to go.mod.
func ModuleTestdata(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the package directory")
		}
		dir = parent
	}
}

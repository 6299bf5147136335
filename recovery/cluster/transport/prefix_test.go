package transport

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPrefixWriter(t *testing.T) {
	long := strings.Repeat("x", maxPartialLine+10)
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{"one line", []string{"hello\n"}, "n1| hello\n"},
		{"line split across writes", []string{"hel", "lo", "\nwor", "ld\n"}, "n1| hello\nn1| world\n"},
		{"several lines in one write", []string{"a\nb\nc\n"}, "n1| a\nn1| b\nn1| c\n"},
		{"empty lines kept", []string{"\n\n"}, "n1| \nn1| \n"},
		{"partial last line flushed by Close", []string{"done\nno newline"}, "n1| done\nn1| no newline\n"},
		{"nothing written", nil, ""},
		{"a line too long without a newline is cut", []string{long, "tail\n"},
			"n1| " + long + "\nn1| tail\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := PrefixWriter(&out, "n1| ")
			for _, s := range tt.writes {
				if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, out.String()); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPrefixWriterAfterClose(t *testing.T) {
	var out bytes.Buffer
	w := PrefixWriter(&out, "p ")
	w.Close()
	if _, err := w.Write([]byte("late\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close = %v, want os.ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestPrefixWriterConcurrent: many nodes, each with its stdout and stderr
// (a PrefixWriter each, same prefix) written from their own goroutines in
// random-sized pieces, into one writer that is not safe for concurrent use
// itself (run with -race). Every line comes out whole, once, in its
// stream's order, with its node's prefix.
func TestPrefixWriterConcurrent(t *testing.T) {
	const nodes, linesPerStream = 12, 300
	var out bytes.Buffer // deliberately unsynchronised
	var wg sync.WaitGroup
	for n := range nodes {
		prefix := fmt.Sprintf("node-%02d | ", n)
		for _, stream := range []string{"out", "err"} {
			w := PrefixWriter(&out, prefix)
			wg.Go(func() {
				defer w.Close()
				var text strings.Builder
				for i := range linesPerStream {
					fmt.Fprintf(&text, "%s %s line %04d %s\n", prefix, stream, i, strings.Repeat("·", i%40))
				}
				b := []byte(text.String())
				for len(b) > 0 {
					k := min(len(b), 1+rand.IntN(50))
					w.Write(b[:k])
					b = b[k:]
				}
			})
		}
	}
	wg.Wait()

	next := map[string]int{} // prefix+stream → next line number expected
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	for _, line := range lines {
		var p2, stream string
		var node, i int
		// "node-NN | node-NN |  STREAM line IIII ···"
		if _, err := fmt.Sscanf(line, "node-%02d | %s | %s line %04d", &node, &p2, &stream, &i); err != nil {
			t.Fatalf("mangled line %q: %v", line, err)
		}
		prefix := fmt.Sprintf("node-%02d | ", node)
		want := fmt.Sprintf("%s%s %s line %04d %s", prefix, prefix, stream, i, strings.Repeat("·", i%40))
		if line != want {
			t.Fatalf("line %q\nwant %q", line, want)
		}
		key := prefix + stream
		if i != next[key] {
			t.Fatalf("%s: line %d came when %d was expected", key, i, next[key])
		}
		next[key]++
	}
	if len(lines) != nodes*2*linesPerStream {
		t.Errorf("%d lines, want %d", len(lines), nodes*2*linesPerStream)
	}
}

package transport

import (
	"bytes"
	"io"
	"os"
	"sync"
)

// maxPartialLine bounds what a PrefixWriter holds waiting for a newline: a
// longer run without one is written out as a line of its own, so a node that
// never ends its line cannot grow memory without limit.
const maxPartialLine = 64 << 10

// lineMu serialises the lines of every PrefixWriter in the process, so that
// PrefixWriters sharing an underlying writer (N nodes onto one terminal)
// never interleave within a line. A single lock keeps that true however the
// underlying writers are shared or wrapped; lines are short, so it costs
// nothing measurable.
var lineMu sync.Mutex

// PrefixWriter returns a writer that writes prefix+line to w for every
// complete line written to it, each in a single w.Write call. It buffers a
// partial line until its newline arrives (or until Close, which writes it
// with a newline added). It is safe for concurrent use, and alongside other
// PrefixWriters on the same w: a line from one node never interleaves with
// another's. Give each stream its own PrefixWriter (one for a node's stdout,
// one for its stderr, with the same prefix): two streams written into one
// would mix their partial lines.
func PrefixWriter(w io.Writer, prefix string) io.WriteCloser {
	return &prefixWriter{w: w, prefix: []byte(prefix)}
}

type prefixWriter struct {
	w      io.Writer
	prefix []byte

	mu     sync.Mutex
	buf    []byte // the partial line not yet written
	closed bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, os.ErrClosed
	}
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.buf = append(p.buf, b...)
			if len(p.buf) >= maxPartialLine {
				if err := p.emit(nil); err != nil {
					return n, err
				}
			}
			break
		}
		if err := p.emit(b[:i+1]); err != nil {
			return n, err
		}
		b = b[i+1:]
	}
	return n, nil
}

// emit writes prefix + the buffered partial line + rest as one line (rest
// ends with a newline, or one is added) and empties the buffer.
func (p *prefixWriter) emit(rest []byte) error {
	line := make([]byte, 0, len(p.prefix)+len(p.buf)+len(rest)+1)
	line = append(append(append(line, p.prefix...), p.buf...), rest...)
	if len(line) == 0 || line[len(line)-1] != '\n' {
		line = append(line, '\n')
	}
	p.buf = p.buf[:0]
	lineMu.Lock()
	defer lineMu.Unlock()
	_, err := p.w.Write(line)
	return err
}

// Close writes out a partial last line, with a newline added. It does not
// close the underlying writer. Writes after Close fail with os.ErrClosed.
func (p *prefixWriter) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if len(p.buf) == 0 {
		return nil
	}
	return p.emit(nil)
}

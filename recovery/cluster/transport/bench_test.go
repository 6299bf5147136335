package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"
)

// BenchmarkUpload measures Upload of a kubecpr-binary-sized file (32 MiB)
// through a real sshd on loopback, and locally.
func BenchmarkUpload(b *testing.B) {
	data := make([]byte, 32<<20)
	rand.Read(data)
	for _, tr := range benchTransports(b) {
		b.Run(tr.Name(), func(b *testing.B) {
			dst := filepath.Join(b.TempDir(), "kubecpr")
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := tr.Upload(context.Background(), bytes.NewReader(data), dst, 0o755); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRun measures one short command (a session each over SSH).
func BenchmarkRun(b *testing.B) {
	for _, tr := range benchTransports(b) {
		b.Run(tr.Name(), func(b *testing.B) {
			for b.Loop() {
				if err := tr.Run(context.Background(), []string{"true"}, nil, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

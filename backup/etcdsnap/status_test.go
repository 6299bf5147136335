package etcdsnap

import (
	"bytes"
	"crypto/sha256"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTrailer(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, size := range []int{0, 1, 31, 32, 33, 64, 4096, 100003} {
		body := make([]byte, size)
		rng.Read(body)
		sum := sha256.Sum256(body)
		stream := append(append([]byte{}, body...), sum[:]...)
		for round := 0; round < 20; round++ {
			tr := newTrailer()
			for rest := stream; len(rest) > 0; {
				n := 1 + rng.Intn(min(len(rest), 1+rng.Intn(100)))
				if round == 0 {
					n = len(rest) // one write
				}
				tr.Write(rest[:n])
				rest = rest[n:]
			}
			if !tr.ok() {
				t.Fatalf("size %d round %d: a correct trailer is refused", size, round)
			}
		}
		bad := append([]byte{}, stream...)
		bad[rng.Intn(len(bad))] ^= 0x40
		tr := newTrailer()
		tr.Write(bad)
		if tr.ok() {
			t.Fatalf("size %d: a damaged stream passes", size)
		}
	}
	if tr := newTrailer(); tr.ok() {
		t.Fatal("an empty stream passes")
	}
}

func TestInspectRefusesGarbage(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"empty":    nil,
		"zeros":    make([]byte, 16384),
		"text":     bytes.Repeat([]byte("not a database\n"), 1000),
		"trailer":  append(make([]byte, 512), bytes.Repeat([]byte{1}, 32)...), // size%512 == 32, wrong sha256
		"short":    []byte{0xED, 0xDA, 0x0C, 0xED},
		"not file": nil,
	} {
		p := filepath.Join(dir, name)
		if name == "not file" {
			os.Mkdir(p, 0o700)
		} else {
			os.WriteFile(p, data, 0o600)
		}
		if _, err := Inspect(p); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "trailer" && !strings.Contains(err.Error(), "damaged") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

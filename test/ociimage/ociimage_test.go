package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// readTar returns the regular files of a tar by name, and the headers in order.
func readTar(t *testing.T, b []byte) (map[string][]byte, []*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	var hdrs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, h)
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = data
		}
	}
}

func getBlob(t *testing.T, files map[string][]byte, d digest.Digest) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Encoded()]
	if !ok {
		t.Fatalf("blob %s missing", d)
	}
	if got := digest.FromBytes(b); got != d {
		t.Fatalf("blob %s has digest %s", d, got)
	}
	return b
}

func TestLayoutManifestConfigLayer(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, []byte("\x7fELF static"), 0o700); err != nil {
		t.Fatal(err)
	}
	imgs := []Image{
		{Name: "registry.k8s.io/kube-apiserver:v1.33.13", Entrypoint: []string{"/usr/local/bin/kube-apiserver"},
			Cmd: []string{"--help"}, Env: []string{"A=b"},
			Files: []File{{Path: "/usr/local/bin/kube-apiserver", Mode: 0o755, SourcePath: src}, {Path: "etc/motd", Data: []byte("hi\n")}}},
		{Name: "registry.k8s.io/etcd:3.5.21-0", Files: []File{{Path: "/usr/local/bin/etcd", Mode: 0o755, Data: []byte("etcd")}}},
	}
	var buf bytes.Buffer
	if err := Write(&buf, imgs...); err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, buf.Bytes())
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout %q", got)
	}
	var index v1.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if index.SchemaVersion != 2 || len(index.Manifests) != 2 {
		t.Fatalf("index %+v", index)
	}
	for i, desc := range index.Manifests {
		img := imgs[i]
		if desc.Annotations["io.containerd.image.name"] != img.Name || desc.Annotations[v1.AnnotationRefName] != img.Name {
			t.Errorf("annotations %v, want both names %s", desc.Annotations, img.Name)
		}
		if desc.MediaType != v1.MediaTypeImageManifest || desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != "amd64" {
			t.Errorf("descriptor %+v", desc)
		}
		mb := getBlob(t, files, desc.Digest)
		if int64(len(mb)) != desc.Size {
			t.Errorf("manifest size %d, descriptor says %d", len(mb), desc.Size)
		}
		var man v1.Manifest
		if err := json.Unmarshal(mb, &man); err != nil {
			t.Fatal(err)
		}
		if man.SchemaVersion != 2 || man.Config.MediaType != v1.MediaTypeImageConfig || len(man.Layers) != 1 || man.Layers[0].MediaType != v1.MediaTypeImageLayer {
			t.Fatalf("manifest %+v", man)
		}
		var cfg v1.Image
		if err := json.Unmarshal(getBlob(t, files, man.Config.Digest), &cfg); err != nil {
			t.Fatal(err)
		}
		lb := getBlob(t, files, man.Layers[0].Digest)
		if int64(len(lb)) != man.Layers[0].Size {
			t.Errorf("layer size %d, manifest says %d", len(lb), man.Layers[0].Size)
		}
		// uncompressed layer: its diff_id is its digest
		if sum := fmt.Sprintf("sha256:%x", sha256.Sum256(lb)); len(cfg.RootFS.DiffIDs) != 1 || string(cfg.RootFS.DiffIDs[0]) != sum || cfg.RootFS.Type != "layers" {
			t.Errorf("rootfs %+v, layer %s", cfg.RootFS, sum)
		}
		if cfg.OS != "linux" || cfg.Architecture != "amd64" || strings.Join(cfg.Config.Entrypoint, " ") != strings.Join(img.Entrypoint, " ") ||
			strings.Join(cfg.Config.Cmd, " ") != strings.Join(img.Cmd, " ") || strings.Join(cfg.Config.Env, " ") != strings.Join(img.Env, " ") {
			t.Errorf("config %+v", cfg)
		}
		lfiles, hdrs := readTar(t, lb)
		for _, f := range img.Files {
			p := strings.TrimPrefix(f.Path, "/")
			want := f.Data
			if f.SourcePath != "" {
				want, _ = os.ReadFile(f.SourcePath)
			}
			if !bytes.Equal(lfiles[p], want) {
				t.Errorf("%s: layer has %q", p, lfiles[p])
			}
		}
		modes := map[string]int64{}
		seenDir := map[string]bool{}
		for _, h := range hdrs {
			modes[h.Name] = h.Mode
			if strings.HasPrefix(h.Name, "/") || strings.Contains(h.Name, "..") {
				t.Errorf("unsafe name %q", h.Name)
			}
			if h.Typeflag == tar.TypeReg {
				// every parent directory comes before its file
				for d := filepath.Dir(h.Name); d != "."; d = filepath.Dir(d) {
					if !seenDir[d+"/"] {
						t.Errorf("%s before its directory %s", h.Name, d)
					}
				}
			} else if h.Typeflag == tar.TypeDir {
				seenDir[h.Name] = true
			}
			if !h.ModTime.Equal(epoch) {
				t.Errorf("%s: time %s", h.Name, h.ModTime)
			}
		}
		if modes["tmp/"] != 0o1777 {
			t.Errorf("/tmp mode %o", modes["tmp/"])
		}
		if _, ok := modes["etc/passwd"]; ok {
			t.Error("etc/passwd in the layer")
		}
		if i == 0 && (modes["usr/local/bin/kube-apiserver"] != 0o755 || modes["etc/motd"] != 0o644) {
			t.Errorf("modes %v", modes)
		}
	}
}

func TestDeterministicAndCallerUntouched(t *testing.T) {
	files := []File{{Path: "/z", Data: []byte("z")}, {Path: "/a", Data: []byte("a")}}
	img := Image{Name: "example.test/x:1", Files: files}
	var a, b bytes.Buffer
	if err := Write(&a, img); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of the same image differ")
	}
	if files[0].Path != "/z" {
		t.Error("Write reordered the caller's files")
	}
}

func TestRejects(t *testing.T) {
	for name, imgs := range map[string][]Image{
		"no image":          nil,
		"no name":           {{Files: []File{{Path: "/a"}}}},
		"same name twice":   {{Name: "x:1"}, {Name: "x:1"}},
		"same path twice":   {{Name: "x:1", Files: []File{{Path: "/a"}, {Path: "a"}}}},
		"file over a dir":   {{Name: "x:1", Files: []File{{Path: "/tmp"}}}},
		"file under a file": {{Name: "x:1", Files: []File{{Path: "/a"}, {Path: "/a/b"}}}},
		"data and source":   {{Name: "x:1", Files: []File{{Path: "/a", Data: []byte("x"), SourcePath: "/etc/hostname"}}}},
		"missing source":    {{Name: "x:1", Files: []File{{Path: "/a", SourcePath: "/nonexistent/x"}}}},
		"empty path":        {{Name: "x:1", Files: []File{{Path: ""}}}},
	} {
		if err := Write(io.Discard, imgs...); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	out := filepath.Join(t.TempDir(), "bad.tar")
	if err := WriteFile(out, Image{Name: "x:1", Files: []File{{Path: "/a", SourcePath: "/nonexistent/x"}}}); err == nil {
		t.Error("WriteFile: no error")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("WriteFile left a partial tar")
	}
}

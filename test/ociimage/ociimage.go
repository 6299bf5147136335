// Package ociimage writes OCI image layout tarballs with the standard
// library, for tests: no registry is reachable, so the images the tests
// run in containerd are built locally from static binaries.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// File is one file in the image's single layer. Data or SourcePath.
type File struct {
	Path       string
	Mode       int64
	Data       []byte
	SourcePath string
}

// Image is a one-layer linux/amd64 image.
type Image struct {
	Name       string // full reference, e.g. "registry.k8s.io/kube-apiserver:v1.33.13"
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
}

var epoch = time.Unix(0, 0).UTC()

// layer builds the uncompressed layer tar: the base directories (/tmp
// world-writable and sticky, /etc, /dev, /proc, /sys, no /etc/passwd), then
// the files sorted by path, their parent directories implied. The output is
// the same for the same input: every time is the epoch.
func layer(in []File) ([]byte, error) {
	files := append([]File(nil), in...) // the caller's order is left alone
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDir := func(d string, mode int64) error {
		if d == "." || d == "" || dirs[d] {
			return nil
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch})
	}
	if err := addDir("tmp", 0o1777); err != nil {
		return nil, err
	}
	for _, d := range []string{"etc", "dev", "proc", "sys"} {
		if err := addDir(d, 0o755); err != nil {
			return nil, err
		}
	}
	seen := map[string]bool{}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if f.Path == "" || p == "" {
			return nil, fmt.Errorf("file with an empty path")
		}
		if seen[p] || dirs[p] {
			return nil, fmt.Errorf("%s: given twice, or also a directory", f.Path)
		}
		seen[p] = true
		if f.Data != nil && f.SourcePath != "" {
			return nil, fmt.Errorf("%s: both Data and SourcePath", f.Path)
		}
		var parents []string
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if seen[d] {
				return nil, fmt.Errorf("%s: its parent %s is a file", f.Path, d)
			}
			if err := addDir(d, 0o755); err != nil {
				return nil, err
			}
		}
		data := f.Data
		if f.SourcePath != "" {
			var err error
			if data, err = os.ReadFile(f.SourcePath); err != nil {
				return nil, err
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type blob struct {
	d    digest.Digest
	data []byte
}

func newBlob(data []byte) blob {
	return blob{d: digest.NewDigestFromBytes(digest.SHA256, sha256sum(data)), data: data}
}

func sha256sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// Write writes an OCI image layout tar with the images to w. Each index
// entry carries the image name in io.containerd.image.name (containerd's
// import uses it) and org.opencontainers.image.ref.name.
func Write(w io.Writer, imgs ...Image) error {
	var blobs []blob
	index := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex}
	if len(imgs) == 0 {
		return fmt.Errorf("ociimage: no image")
	}
	names := map[string]bool{}
	for _, img := range imgs {
		if img.Name == "" || names[img.Name] {
			return fmt.Errorf("ociimage: image name %q empty or given twice", img.Name)
		}
		names[img.Name] = true
		l, err := layer(img.Files)
		if err != nil {
			return fmt.Errorf("%s: %w", img.Name, err)
		}
		lb := newBlob(l)
		cfg := v1.Image{
			Created:  &epoch,
			Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
			Config:   v1.ImageConfig{Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env},
			RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{lb.d}},
		}
		cb, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		cblob := newBlob(cb)
		man := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
			Config: v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cblob.d, Size: int64(len(cb))},
			Layers: []v1.Descriptor{{MediaType: v1.MediaTypeImageLayer, Digest: lb.d, Size: int64(len(l))}}}
		mb, err := json.Marshal(man)
		if err != nil {
			return err
		}
		mblob := newBlob(mb)
		blobs = append(blobs, lb, cblob, mblob)
		index.Manifests = append(index.Manifests, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: mblob.d, Size: int64(len(mb)),
			Platform:    &v1.Platform{Architecture: "amd64", OS: "linux"},
			Annotations: map[string]string{"io.containerd.image.name": img.Name, v1.AnnotationRefName: img.Name}})
	}
	ib, err := json.Marshal(index)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := put(v1.ImageLayoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	seen := map[digest.Digest]bool{}
	for _, b := range blobs {
		if seen[b.d] {
			continue
		}
		seen[b.d] = true
		if err := put("blobs/sha256/"+b.d.Encoded(), b.data); err != nil {
			return err
		}
	}
	if err := put("index.json", ib); err != nil {
		return err
	}
	return tw.Close()
}

// WriteFile writes the tar to a file (removed again if writing fails).
func WriteFile(file string, imgs ...Image) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	err = Write(f, imgs...)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(file)
	}
	return err
}

package etcdsnap

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/fnv"
	"io"
	"os"
)

// Status is what `etcdctl snapshot status FILE -w json` (etcdutl) reports
// for a snapshot file, computed the same way, with the same JSON names.
type Status struct {
	// Hash is the CRC-32 (Castagnoli) of every bucket name, key and value
	// in order.
	Hash uint32 `json:"hash"`
	// Revision is the main revision of the newest entry in etcd's "key"
	// bucket: the store revision the snapshot holds.
	Revision int64 `json:"revision"`
	// TotalKey counts the entries of every bucket (etcd's keys and
	// revisions, but also its members, leases, meta...), not user keys.
	TotalKey int `json:"totalKey"`
	// TotalSize is the database size in bytes (pages × page size), without
	// the sha256 etcd appends to a snapshot.
	TotalSize int64 `json:"totalSize"`
}

// Inspect reads a snapshot file as etcd sends it (a bbolt database, then
// the sha256 of the database) and returns its Status. The trailing sha256,
// when the file has one (etcd's rule: size modulo 512 is 32), must match
// the database, or the file is reported as damaged.
//
// The bbolt file format is read directly (meta pages, branch and leaf
// pages, inline buckets), read-only and bounds-checked, so kubecpr needs no
// database library to check what it saved; the result is asserted equal to
// real etcdctl's in this package's tests.
func Inspect(path string) (Status, error) {
	f, err := os.Open(path)
	if err != nil {
		return Status{}, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return Status{}, err
	}
	if !info.Mode().IsRegular() {
		return Status{}, fmt.Errorf("%s is not a regular file", path)
	}
	size := info.Size()
	if size%512 == sha256.Size {
		size -= sha256.Size
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
			return Status{}, fmt.Errorf("%s: %w", path, err)
		}
		want := make([]byte, sha256.Size)
		if _, err := f.ReadAt(want, size); err != nil {
			return Status{}, fmt.Errorf("%s: %w", path, err)
		}
		if string(h.Sum(nil)) != string(want) {
			return Status{}, fmt.Errorf("%s: the snapshot is damaged: its database does not match the sha256 etcd appended to it", path)
		}
	}
	st, err := boltStatus(f, size)
	if err != nil {
		return Status{}, fmt.Errorf("%s: not a usable etcd snapshot: %w", path, err)
	}
	return st, nil
}

// bbolt on-disk format (go.etcd.io/bbolt, version 2), native byte order.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16 // id u64, flags u16, count u16, overflow u32
	elementSize      = 16 // branch: pos, ksize u32, pgid u64; leaf: flags, pos, ksize, vsize u32
	bucketHeaderSize = 16 // root pgid u64, sequence u64
	metaSize         = 64
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	metaPageFlag     = 0x04
	bucketLeafFlag   = 0x01
	maxDepth         = 64
)

var ne = binary.NativeEndian

var errCorrupt = errors.New("the bbolt database is corrupt")

type boltMeta struct {
	pageSize uint32
	root     uint64
	pgid     uint64 // high water mark: pages in use
	txid     uint64
}

// parseMeta decodes and validates a meta page's body (64 bytes after the
// page header).
func parseMeta(b []byte) (boltMeta, bool) {
	if len(b) < metaSize || ne.Uint32(b[0:]) != boltMagic || ne.Uint32(b[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(b[:56])
	if h.Sum64() != ne.Uint64(b[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: ne.Uint32(b[8:]), root: ne.Uint64(b[16:]), pgid: ne.Uint64(b[40:]), txid: ne.Uint64(b[48:])}, true
}

type boltReader struct {
	r        io.ReaderAt
	size     int64
	pageSize int64
	pages    uint64 // high water mark
	visited  uint64
}

func (br *boltReader) readMetaAt(off int64) (boltMeta, bool) {
	b := make([]byte, pageHeaderSize+metaSize)
	if off+int64(len(b)) > br.size {
		return boltMeta{}, false
	}
	if _, err := br.r.ReadAt(b, off); err != nil {
		return boltMeta{}, false
	}
	if ne.Uint16(b[8:]) != metaPageFlag {
		return boltMeta{}, false
	}
	return parseMeta(b[pageHeaderSize:])
}

// boltStatus computes Status the way etcdutl's snapshot status does: for
// every top-level bucket in key order, its name, then each key and value.
func boltStatus(r io.ReaderAt, size int64) (Status, error) {
	br := &boltReader{r: r, size: size}
	m0, ok0 := br.readMetaAt(0)
	pageSize := int64(m0.pageSize)
	if !ok0 {
		// Like bbolt: a damaged first meta page; find the second one.
		for _, ps := range []int64{4096, 8192, 16384, 32768, 65536, 1024, 2048} {
			if m1, ok := br.readMetaAt(ps); ok && int64(m1.pageSize) == ps {
				pageSize = ps
				break
			}
		}
	}
	if pageSize < 512 || pageSize > 1<<20 || pageSize&(pageSize-1) != 0 {
		return Status{}, errors.New("no valid bbolt meta page (not a bbolt database, or both meta pages damaged)")
	}
	m1, ok1 := br.readMetaAt(pageSize)
	m := m0
	switch {
	case ok0 && ok1 && m1.txid > m0.txid, !ok0 && ok1:
		m = m1
	case !ok0 && !ok1:
		return Status{}, errors.New("no valid bbolt meta page (not a bbolt database, or both meta pages damaged)")
	}
	if int64(m.pageSize) != pageSize {
		return Status{}, fmt.Errorf("%w: the meta pages disagree on the page size", errCorrupt)
	}
	br.pageSize = pageSize
	br.pages = m.pgid
	total := int64(m.pgid) * pageSize
	if m.pgid < 2 || m.pgid > uint64(size/pageSize) || total > size {
		return Status{}, fmt.Errorf("%w: it claims %d pages of %d bytes but the file holds %d bytes (truncated?)", errCorrupt, m.pgid, pageSize, size)
	}
	st := Status{TotalSize: total}
	crc := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	root, err := br.page(m.root)
	if err != nil {
		return Status{}, err
	}
	err = br.walk(root, 0, func(name, value []byte, flags uint32) error {
		if flags&bucketLeafFlag == 0 {
			return fmt.Errorf("%w: top-level key %q is not a bucket", errCorrupt, name)
		}
		crc.Write(name)
		isKey := string(name) == "key"
		return br.forEach(value, func(k, v []byte) error {
			crc.Write(k)
			crc.Write(v)
			if isKey {
				if len(k) < 8 {
					return fmt.Errorf("%w: a key of bucket \"key\" is %d bytes, not a revision", errCorrupt, len(k))
				}
				st.Revision = int64(binary.BigEndian.Uint64(k[:8]))
			}
			st.TotalKey++
			return nil
		})
	})
	if err != nil {
		return Status{}, err
	}
	st.Hash = crc.Sum32()
	return st, nil
}

// page reads page id with its overflow pages.
func (br *boltReader) page(id uint64) ([]byte, error) {
	if id < 2 || id >= br.pages {
		return nil, fmt.Errorf("%w: page %d is out of range (%d pages)", errCorrupt, id, br.pages)
	}
	br.visited++
	if br.visited > br.pages {
		return nil, fmt.Errorf("%w: pages are referenced more than once (a cycle?)", errCorrupt)
	}
	off := int64(id) * br.pageSize
	head := make([]byte, pageHeaderSize)
	if _, err := br.r.ReadAt(head, off); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	if ne.Uint64(head) != id {
		return nil, fmt.Errorf("%w: page %d says it is page %d", errCorrupt, id, ne.Uint64(head))
	}
	overflow := uint64(ne.Uint32(head[12:]))
	if id+overflow >= br.pages {
		return nil, fmt.Errorf("%w: page %d overflows past the last page", errCorrupt, id)
	}
	p := make([]byte, int64(overflow+1)*br.pageSize)
	if _, err := br.r.ReadAt(p, off); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	return p, nil
}

// walk calls fn for every leaf element under page p, in key order.
func (br *boltReader) walk(p []byte, depth int, fn func(k, v []byte, flags uint32) error) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: the tree is deeper than %d levels", errCorrupt, maxDepth)
	}
	if len(p) < pageHeaderSize {
		return fmt.Errorf("%w: short page", errCorrupt)
	}
	flags, count := ne.Uint16(p[8:]), int(ne.Uint16(p[10:]))
	if pageHeaderSize+count*elementSize > len(p) {
		return fmt.Errorf("%w: page %d holds %d elements that do not fit in it", errCorrupt, ne.Uint64(p), count)
	}
	field := func(at, n int) ([]byte, error) {
		if at < 0 || n < 0 || at > len(p) || n > len(p)-at {
			return nil, fmt.Errorf("%w: an element of page %d points outside it", errCorrupt, ne.Uint64(p))
		}
		return p[at : at+n], nil
	}
	for i := 0; i < count; i++ {
		e := pageHeaderSize + i*elementSize
		switch flags {
		case branchPageFlag:
			child, err := br.page(ne.Uint64(p[e+8:]))
			if err != nil {
				return err
			}
			if err := br.walk(child, depth+1, fn); err != nil {
				return err
			}
		case leafPageFlag:
			eflags, pos, ksize, vsize := ne.Uint32(p[e:]), int(ne.Uint32(p[e+4:])), int(ne.Uint32(p[e+8:])), int(ne.Uint32(p[e+12:]))
			k, err := field(e+pos, ksize)
			if err != nil {
				return err
			}
			v, err := field(e+pos+ksize, vsize)
			if err != nil {
				return err
			}
			if err := fn(k, v, eflags); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: page %d has type %#x, want a branch or leaf page", errCorrupt, ne.Uint64(p), flags)
		}
	}
	return nil
}

// forEach calls fn for every key of the bucket whose header is value, as
// bbolt's Bucket.ForEach does: a nested bucket is given with a nil value.
func (br *boltReader) forEach(value []byte, fn func(k, v []byte) error) error {
	if len(value) < bucketHeaderSize {
		return fmt.Errorf("%w: bucket header too short", errCorrupt)
	}
	var p []byte
	if root := ne.Uint64(value); root != 0 {
		var err error
		if p, err = br.page(root); err != nil {
			return err
		}
	} else {
		p = value[bucketHeaderSize:] // inline bucket: its one leaf page follows the header
		if len(p) >= pageHeaderSize && ne.Uint16(p[8:]) != leafPageFlag {
			return fmt.Errorf("%w: an inline bucket is not a leaf page", errCorrupt)
		}
	}
	return br.walk(p, 0, func(k, v []byte, flags uint32) error {
		if flags&bucketLeafFlag != 0 {
			v = nil
		}
		return fn(k, v)
	})
}

// trailer hashes a stream whose last 32 bytes are the sha256 of everything
// before them (a snapshot as etcd sends it): Sum is the hash of the body,
// Tail the 32 bytes held back.
type trailer struct {
	h    hash.Hash
	tail []byte
}

func newTrailer() *trailer { return &trailer{h: sha256.New(), tail: make([]byte, 0, 2*sha256.Size)} }

func (t *trailer) Write(p []byte) (int, error) {
	n := len(p)
	if len(t.tail)+len(p) <= sha256.Size {
		t.tail = append(t.tail, p...)
		return n, nil
	}
	// Emit all but the last 32 bytes of tail+p.
	emit := len(t.tail) + len(p) - sha256.Size
	if emit <= len(t.tail) {
		t.h.Write(t.tail[:emit])
		rest := append([]byte{}, t.tail[emit:]...)
		t.tail = append(append(t.tail[:0], rest...), p...)
		return n, nil
	}
	t.h.Write(t.tail)
	t.h.Write(p[:emit-len(t.tail)])
	t.tail = append(t.tail[:0], p[len(p)-sha256.Size:]...)
	return n, nil
}

// ok reports whether the held-back 32 bytes are the sha256 of the body.
func (t *trailer) ok() bool {
	return len(t.tail) == sha256.Size && string(t.h.Sum(nil)) == string(t.tail)
}

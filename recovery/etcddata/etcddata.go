// Package etcddata reads an etcd v3.5 member's data file (member/snap/db,
// a bbolt database) offline: the cluster membership etcd itself keeps, the
// latest revision of a key, and kubeadm's ClusterConfiguration from the
// kubeadm-config ConfigMap.
//
// # Layout read (etcd v3.5, server/etcdserver/api/membership/store.go)
//
// Bucket "members": key = member ID in hex (as etcdctl prints it), value =
// the member as JSON ({"id":N,"peerURLs":[...],"isLearner":b,"name":...,
// "clientURLs":[...]}); a member added but not started yet has no name.
// Bucket "members_removed": key = removed member ID in hex. Bucket "meta":
// "consistent_index" and "term", 8 bytes big endian: how far this member
// applied the raft log, which orders the membership of several members.
// Bucket "key": key = revision (8 bytes main, '_', 8 bytes sub; a 't'
// appended marks a tombstone), value = mvccpb.KeyValue.
//
// # Reading a member that runs
//
// A running etcd holds the file with an exclusive flock and never lets it
// go, so opening with bbolt's lock timeout only fails later. A plain copy
// is not safe either: bbolt reuses pages freed by earlier transactions, so
// pages the copied meta page points at may be rewritten while the copy is
// taken. Open therefore first tries a shared lock without waiting: when it
// is granted (etcd stopped) the file is read in place, and etcd cannot
// start writing while it is held. When etcd holds the lock, Open copies the
// file and checks that both meta pages are byte for byte the same before
// and after the copy: bbolt writes no page reachable from the newest meta
// until a later transaction has committed a new meta page, so an unchanged
// meta proves the copy consistent at that meta (else it retries). The copy
// is made into an anonymous in-memory file (memfd): the data holds every
// Secret of the cluster, and nothing of it is written to disk or left
// behind, even when the process is killed.
package etcddata

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// ErrNotFound is returned by Get for a key that does not exist (never
// written, deleted, or compacted away).
var ErrNotFound = errors.New("key not found in etcd's data")

// copyRetries is how often Open copies a live member's file before it
// gives up because every copy saw a commit.
const copyRetries = 5

// DB is an open member data file.
type DB struct {
	path string
	live bool // read from an in-memory copy while etcd held the file
	db   *bolt.DB
}

// Open opens the member data file at host path p read-only (see the
// package comment for how a running member is read).
func Open(p string) (*DB, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("etcd data %s: %w: check --data-dir in the etcd manifest", p, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("etcd data %s: %w", p, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("etcd data %s is not a regular file (%s): it must be etcd's bbolt database", p, st.Mode())
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	switch {
	case err == nil:
		return openBolt(p, f, false)
	case errors.Is(err, unix.EWOULDBLOCK):
		defer f.Close()
		mem, err := consistentCopy(p, f)
		if err != nil {
			return nil, err
		}
		return openBolt(p, mem, true)
	default:
		f.Close()
		return nil, fmt.Errorf("etcd data %s: locking it for reading: %w", p, err)
	}
}

func openBolt(p string, f *os.File, live bool) (*DB, error) {
	db, err := bolt.Open(p, 0, &bolt.Options{
		ReadOnly: true,
		Timeout:  time.Second,
		OpenFile: func(string, int, os.FileMode) (*os.File, error) { return f, nil },
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("etcd data %s is not a readable bbolt database: %w: restore the member from a snapshot", p, err)
	}
	return &DB{path: p, live: live, db: db}, nil
}

// metaBytes reads both bbolt meta pages (page 0 and page 1).
func metaBytes(f *os.File) ([]byte, error) {
	head := make([]byte, 32)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, err
	}
	ps := int(binary.LittleEndian.Uint32(head[24:28]))
	if ps < 512 || ps > 1<<20 {
		return nil, fmt.Errorf("page size %d in the first meta page is not a bbolt page size", ps)
	}
	b := make([]byte, 2*ps)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}

// consistentCopy copies a live member's file into a memfd (see the package
// comment).
func consistentCopy(p string, f *os.File) (*os.File, error) {
	for try := 0; try < copyRetries; try++ {
		before, err := metaBytes(f)
		if err != nil {
			return nil, fmt.Errorf("etcd data %s: reading its meta pages: %w", p, err)
		}
		fd, err := unix.MemfdCreate("kubecpr-etcd-data", unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("etcd data %s: making an in-memory copy: %w", p, err)
		}
		mem := os.NewFile(uintptr(fd), "kubecpr-etcd-data")
		if _, err := io.Copy(mem, io.NewSectionReader(f, 0, 1<<62)); err != nil {
			mem.Close()
			return nil, fmt.Errorf("etcd data %s: copying it: %w", p, err)
		}
		after, err := metaBytes(f)
		if err != nil {
			mem.Close()
			return nil, fmt.Errorf("etcd data %s: reading its meta pages: %w", p, err)
		}
		if bytes.Equal(before, after) {
			return mem, nil
		}
		mem.Close()
	}
	return nil, fmt.Errorf("etcd data %s: etcd committed during each of %d copies: it is too busy to be read while it runs; read it through etcd's client, or stop etcd", p, copyRetries)
}

// Close releases the file (and the in-memory copy).
func (d *DB) Close() error { return d.db.Close() }

// Live reports whether the data was read from a copy while etcd ran.
func (d *DB) Live() bool { return d.live }

// Member is one etcd member as etcd keeps it.
type Member struct {
	ID         string   `json:"id"` // hex, as etcdctl prints it
	Name       string   `json:"name,omitempty"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs,omitempty"`
	IsLearner  bool     `json:"isLearner,omitempty"`
}

// Membership is the member list in one member's data.
type Membership struct {
	Members []Member `json:"members"`
	// Removed are the IDs (hex) of members removed from the cluster.
	Removed []string `json:"removed,omitempty"`
	// ConsistentIndex is the raft index this member applied: of several
	// members' lists, the one with the highest index is the newest.
	ConsistentIndex uint64 `json:"consistentIndex"`
	Term            uint64 `json:"term,omitempty"`
	// Live: read from a copy while etcd ran.
	Live bool `json:"live,omitempty"`
}

// Membership reads the member list.
func (d *DB) Membership() (*Membership, error) {
	m := &Membership{Live: d.live}
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("members"))
		if b == nil {
			return errors.New("no members bucket: this is not the data of an etcd v3.5 member")
		}
		if err := b.ForEach(func(k, v []byte) error {
			if _, err := strconv.ParseUint(string(k), 16, 64); err != nil {
				return fmt.Errorf("member key %q is not a hex member ID", k)
			}
			var raw struct {
				PeerURLs   []string `json:"peerURLs"`
				IsLearner  bool     `json:"isLearner"`
				Name       string   `json:"name"`
				ClientURLs []string `json:"clientURLs"`
			}
			if err := json.Unmarshal(v, &raw); err != nil {
				return fmt.Errorf("member %s: %w", k, err)
			}
			m.Members = append(m.Members, Member{ID: string(k), Name: raw.Name, PeerURLs: raw.PeerURLs, ClientURLs: raw.ClientURLs, IsLearner: raw.IsLearner})
			return nil
		}); err != nil {
			return err
		}
		if rb := tx.Bucket([]byte("members_removed")); rb != nil {
			_ = rb.ForEach(func(k, _ []byte) error { m.Removed = append(m.Removed, string(k)); return nil })
		}
		if mb := tx.Bucket([]byte("meta")); mb != nil {
			if v := mb.Get([]byte("consistent_index")); len(v) == 8 {
				m.ConsistentIndex = binary.BigEndian.Uint64(v)
			}
			if v := mb.Get([]byte("term")); len(v) == 8 {
				m.Term = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("etcd data %s: %w", d.path, err)
	}
	sort.Slice(m.Members, func(i, j int) bool {
		if m.Members[i].Name != m.Members[j].Name {
			return m.Members[i].Name < m.Members[j].Name
		}
		return m.Members[i].ID < m.Members[j].ID
	})
	sort.Strings(m.Removed)
	return m, nil
}

// Get returns the latest revision of key, ErrNotFound when the key does
// not exist (its latest revision is a tombstone, or it was never written).
// etcd keeps no on-disk index, so the key bucket is scanned from the
// newest revision back.
func (d *DB) Get(key string) (*mvccpb.KeyValue, error) {
	var out *mvccpb.KeyValue
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		if b == nil {
			return errors.New("no key bucket: this is not the data of an etcd v3 member")
		}
		c := b.Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var kv mvccpb.KeyValue
			if err := kv.Unmarshal(v); err != nil {
				return fmt.Errorf("revision %s: %w", hex.EncodeToString(k), err)
			}
			if string(kv.Key) != key {
				continue
			}
			if len(k) == 18 && k[17] == 't' {
				return nil // tombstone: deleted
			}
			out = &kv
			return nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("etcd data %s: %w", d.path, err)
	}
	if out == nil {
		return nil, fmt.Errorf("%s in %s: %w", key, d.path, ErrNotFound)
	}
	return out, nil
}

// ReadMembership opens the member data at dbPath and reads its members.
func ReadMembership(dbPath string) (*Membership, error) {
	d, err := Open(dbPath)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Membership()
}

// KubeadmConfigKey is where the apiserver stores kubeadm's ConfigMap.
const KubeadmConfigKey = "/registry/configmaps/kube-system/kubeadm-config"

// KubeadmConfig returns the ClusterConfiguration YAML kubeadm keeps in the
// kubeadm-config ConfigMap, read from the member data at dbPath.
func KubeadmConfig(dbPath string) ([]byte, error) {
	d, err := Open(dbPath)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	kv, err := d.Get(KubeadmConfigKey)
	if err != nil {
		return nil, err
	}
	cm, err := decodeConfigMap(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", KubeadmConfigKey, dbPath, err)
	}
	s, ok := cm.Data["ClusterConfiguration"]
	if !ok {
		return nil, fmt.Errorf("%s in %s has no ClusterConfiguration: pass the kubeadm config with --config", KubeadmConfigKey, dbPath)
	}
	return []byte(s), nil
}

var protoMagic = []byte("k8s\x00")

func decodeConfigMap(v []byte) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	switch {
	case bytes.HasPrefix(v, []byte("k8s:enc:")):
		return nil, errors.New("the ConfigMap is encrypted at rest (EncryptionConfiguration): pass the kubeadm config with --config")
	case bytes.HasPrefix(v, protoMagic):
		var u runtime.Unknown
		if err := u.Unmarshal(v[len(protoMagic):]); err != nil {
			return nil, fmt.Errorf("not a Kubernetes protobuf object: %w", err)
		}
		if err := cm.Unmarshal(u.Raw); err != nil {
			return nil, fmt.Errorf("not a ConfigMap: %w", err)
		}
	case len(v) > 0 && v[0] == '{':
		if err := json.Unmarshal(v, cm); err != nil {
			return nil, fmt.Errorf("not a ConfigMap in JSON: %w", err)
		}
	default:
		return nil, errors.New("neither Kubernetes protobuf nor JSON")
	}
	return cm, nil
}

package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// maxLinkHops bounds symlink resolution (the kernel's own limit is 40).
const maxLinkHops = 40

// cleanNode turns p into a clean absolute node path.
func cleanNode(p string) string { return path.Clean("/" + filepath.ToSlash(p)) }

// hostOf joins a clean node path onto root without resolving anything.
func hostOf(root, np string) string {
	return filepath.Join(root, filepath.FromSlash(cleanNode(np)))
}

// resolve maps node path np to a host path under root the way the node
// itself would see it if root were "/": symlinks in the directory
// components are followed, an absolute target is taken relative to root and
// ".." never climbs above root. The last component is followed only when
// followLast is set. With root "/" this is exactly the kernel's resolution;
// on a rehearsal copy it keeps an absolute link such as
// /var/lib/kubelet -> /data/kubelet inside the copy instead of reaching the
// real node's files.
//
// It returns the resolved node path and its host path. Components that do
// not exist are kept verbatim (the caller may be about to create them).
func resolve(root, np string, followLast bool) (nodePath, host string, err error) {
	rest := splitNode(np)
	var done []string
	hops := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cand := append(append([]string(nil), done...), c)
		if len(rest) == 0 && !followLast {
			done = cand
			continue
		}
		candHost := filepath.Join(root, filepath.Join(cand...))
		info, err := os.Lstat(candHost)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				done = cand
				continue
			}
			return "", "", err
		}
		if info.Mode()&fs.ModeSymlink == 0 {
			done = cand
			continue
		}
		hops++
		if hops > maxLinkHops {
			return "", "", fmt.Errorf("%s: too many levels of symbolic links under %s", cleanNode(np), root)
		}
		target, err := os.Readlink(candHost)
		if err != nil {
			return "", "", err
		}
		if strings.HasPrefix(target, "/") {
			done = nil
		}
		rest = append(splitNode(target), rest...)
	}
	nodePath = "/" + strings.Join(done, "/")
	return nodePath, filepath.Join(root, filepath.FromSlash(nodePath)), nil
}

func splitNode(p string) []string {
	var out []string
	for _, c := range strings.Split(filepath.ToSlash(p), "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// within reports whether node path p is base or below it.
func within(p, base string) bool {
	return p == base || base == "/" || strings.HasPrefix(p, base+"/")
}

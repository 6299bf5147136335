package backup

import (
	"path"
	"path/filepath"
	"strings"

	kubenode "github.com/kubecpr/kubecpr/recovery/node"
)

// cleanNode turns p into a clean absolute node path.
func cleanNode(p string) string { return path.Clean("/" + filepath.ToSlash(p)) }

// hostOf joins a clean node path onto root without resolving anything.
func hostOf(root, np string) string {
	return filepath.Join(root, filepath.FromSlash(cleanNode(np)))
}

// resolve maps node path np to a host path under root with kubecpr's one
// resolver (node.ResolveIn): symlinks followed inside root as a chroot
// would, the last component only when followLast is set.
func resolve(root, np string, followLast bool) (nodePath, host string, err error) {
	return kubenode.ResolveIn(root, np, followLast)
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

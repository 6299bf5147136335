// Package backup copies every file a recovery run may touch, before it
// touches any, and restores them byte for byte: content, permission bits,
// owner, mtime and symlink target.
//
// # On-disk layout
//
// One backup is one directory, <state-dir>/backups/<run-id>/, mode 0700:
//
//	manifest.json              0600, written last and atomically (atomicfile):
//	                           its presence means the backup is complete
//	files/<node path>          one blob per regular file, mirroring the node
//	                           path (files/etc/kubernetes/pki/ca.key), 0600
//	                           whatever the original mode (keys!), fsynced;
//	                           directories under files/ are 0700 and fsynced
//	etcd/snapshot.db           optional, added by Manifest.AddEtcdSnapshot
//
// manifest.json holds the run id, creation time, node root, the sources
// asked for, and one entry per path: node path, type (file, dir, symlink),
// mode (permission bits), uid, gid, symlink target verbatim, size, sha256,
// mtime and blob. The real mode and owner are only in the manifest.
//
// Node paths are absolute paths as on the node ("/etc/kubernetes/pki/ca.crt")
// without the --root prefix, so a backup made on a rehearsal copy of a node
// reads the same as one made on the node itself.
//
// # What is recorded
//
//   - Directories are walked recursively without following symlinks; a
//     symlink is recorded as a symlink with its target verbatim, never
//     resolved.
//   - Directory components of a source are resolved inside the root: an
//     absolute symlink such as /var/lib/kubelet -> /data/kubelet is followed
//     to <root>/data/kubelet, never to the real node's /data/kubelet. With
//     root "/" this is the kernel's own resolution.
//   - A source that is itself a symlink to a directory (/etc/kubernetes ->
//     /srv/k8s) is followed, so the files the run will write through it are
//     backed up; its tree is recorded under the source's own path, the way
//     the run addresses it, and Manifest.Resolved notes the target. A source
//     that is a symlink to anything else is recorded as the symlink.
//   - A source that does not exist is recorded in Manifest.Absent: a restore
//     with Prune removes it if it appeared since.
//   - Sockets, devices and FIFOs are not copied and are listed in
//     Manifest.Skipped, as is kubecpr's own state dir when a source
//     contains it. Restore leaves skipped paths alone.
//   - Hard links are copied as independent files; a restore writes them as
//     separate files.
//
// # Create
//
// Create sizes the sources first (Size) and checks the state dir's
// filesystem (CheckSpace: the copy plus 10%, at least 16 MiB), so a full
// disk stops the run with a SpaceError before anything is written. On any
// later error everything Create made is removed. Create is idempotent: a
// complete backup of the same root and sources is returned untouched (a
// resumed run keeps the copy taken before its first change); a different
// complete backup is refused with ErrExists; a directory left by an
// interrupted Create is cleared and the backup taken again.
//
// # Restore
//
// Restore and RestoreEntry put files back with atomicfile (temporary file
// with the recorded mode and owner, fsync, rename, directory fsync) after
// checking the blob's sha256, so a damaged blob is never written; symlinks
// are replaced atomically; missing directories are created with their
// recorded mode. Entries that already match are left alone, so a restore is
// idempotent. With Prune, paths created after the backup under backed-up
// directories (a new kubelet-client-<ts>.pem) and absent sources that
// appeared are removed. Load refuses a manifest whose entries would make a
// restore read outside the backup directory.
//
// Nothing here prints or logs file contents; errors name paths only.
package backup

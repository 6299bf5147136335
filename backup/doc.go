// Package backup copies every file a recovery run may touch, before it
// touches any, and restores them byte for byte.
//
// On-disk layout of one backup (<state-dir>/backups/<run-id>/, mode 0700):
//
//	manifest.json        written last, atomically: its presence means complete
//	files/<node path>    one blob per regular file, mode 0600 (keys!), fsynced
//
// The manifest lists every entry (path, type, mode, uid, gid, symlink target,
// size, sha256, mtime, blob). Node paths are absolute paths on the node
// ("/etc/kubernetes/pki/ca.crt") without the --root prefix, so a backup made
// on a rehearsal copy reads the same as one made on the node.
//
// A source that does not exist is recorded in Manifest.Absent: restoring
// with Prune removes it again if it appeared after the backup.
package backup

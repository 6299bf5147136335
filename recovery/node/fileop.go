package node

import "io/fs"

// FileOp is one change to a node file, computed by a stage and carried out
// (journaled, backed up, atomically) by the pipeline runner. Data is never
// journaled or printed: only its sha256 is.
type FileOp struct {
	Path string      // node path
	Data []byte      // new content for a regular file
	Mode fs.FileMode // mode for a file that does not exist yet
	Link string      // when set: make Path a symlink to Link (verbatim)
	// Secret marks content that holds a private key (mode forced to 0600).
	Secret bool
}

// IsLink reports whether the op makes a symlink.
func (o FileOp) IsLink() bool { return o.Link != "" }

// Package journal is kubecpr's write-ahead journal and node lock.
//
// # Format
//
// One record per line, text so an engineer can read it with less:
//
//	<crc32c of the JSON, 8 hex digits> <JSON record>\n
//
// Records carry a sequence number that starts at 1 and grows by exactly one.
// Every Append writes the line and fsyncs the file before it returns, so a
// record that Append acknowledged survives a power cut.
//
// What resume and rollback rely on is typed (see Record): a file action's
// intent is its Changes, each a path with its old and new State; a run's
// start is Start and Options, or Cluster. Data holds only free-form facts.
// Journals written before records were typed (path.N/old.N/new.N keys,
// options as JSON in a string) are converted on read.
//
// # Recovery rules
//
//   - A torn last record (no newline, bad checksum or bad JSON on the final
//     line) is what a crash in the middle of an append leaves. Open copies
//     the whole file to <path>.broken-<unix-nanos>, cuts the journal back to
//     the end of the last good record and fsyncs it. The action whose record
//     was torn is then treated as not started or in flight by the runner.
//   - Any other damage (a bad record followed by more records, a sequence
//     gap) is not a crash artefact: Open fails with ErrCorrupt, names the
//     line and byte offset, and changes nothing.
//   - A record whose checksum holds but which this kubecpr cannot use (an
//     unknown change state, an old record that does not convert) is refused
//     the same way wherever it stands, the last line included: it was
//     written whole, so it is not a torn tail.
//
// # Secrets
//
// Append refuses any record whose encoded JSON contains PEM armour or the
// words "PRIVATE KEY", in whatever field: key material never reaches the
// journal.
//
// # Lock
//
// Acquire takes an exclusive flock on <dir>/lock and writes the holder's pid,
// start time and command line into it. The kernel drops the flock when the
// holder dies, even by SIGKILL, so a stale lock file never blocks a run.
package journal

// Package etcdsnap takes the etcd snapshot of the backup stage: when the
// node's etcd answers — typically still serving on its own expired
// certificates — a snapshot is streamed through etcd's own client
// (go.etcd.io/etcd/client/v3, Maintenance.Snapshot) into a file, checked,
// and recorded in the backup manifest (backup.Manifest.AddEtcdSnapshot,
// see SaveToBackup). When etcd does not answer, Save fails fast with an
// error wrapping ErrEtcdDown and the caller goes on without a snapshot.
//
// # Credentials
//
// kubecpr does not use the node's etcd client certificates
// (healthcheck-client, apiserver-etcd-client): on a node that needs
// kubecpr they have expired, and etcd refuses them. Instead Save signs,
// in memory, a client certificate for a fresh ECDSA P-256 key with the
// etcd CA (/etc/kubernetes/pki/etcd/ca.crt and ca.key, read by the caller
// through the node): CN "kubecpr-etcd-snapshot", client auth only, valid
// from five minutes before the machine's real clock to ten minutes after.
// The real clock, not the run's --now: etcd checks client certificates
// against its own clock. The key and certificate are never written to
// disk, printed, or put into an error; they are gone when Save returns.
//
// # Trusting an expired etcd
//
// Go's TLS verification refuses a server certificate that has expired,
// which is exactly etcd's state when kubecpr is needed. Save replaces it
// with a check that keeps everything but the validity period: the chain
// must lead to the etcd CA given, the leaf must name the loopback IP
// dialled and allow server auth. The client certificate is sent only after
// that check passed. A server whose certificate the etcd CA did not issue
// gets nothing and Save fails with a *ServerCertError.
//
// # Loopback only
//
// Endpoints are https URLs with a loopback IP literal; no name is
// resolved and no proxy is used. EndpointsFromManifest picks them from the
// etcd manifest's --listen-client-urls and --advertise-client-urls.
//
// # The file
//
// The snapshot is written to a temporary file (0600) beside the
// destination, fsynced, checked — the sha256 etcd appends to the stream
// must match the data, and the bbolt database must read (Inspect, which
// computes what `etcdctl snapshot status` reports: revision, total keys,
// hash, size) — then renamed into place and the directory fsynced. The
// file keeps etcd's trailing sha256, like `etcdctl snapshot save`, so
// `etcdutl snapshot restore` checks it.
package etcdsnap

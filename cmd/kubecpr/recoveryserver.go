package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/apiserver"
)

func recoveryServerCommand() *cli.Command {
	return &cli.Command{
		Name:  "recovery-server",
		Usage: "show or tear down kubecpr's temporary recovery API server",
		Subcommands: []*cli.Command{
			{
				Name:  "start",
				Usage: "start a recovery API server for manual kubectl work, and leave it running (stop it with `recovery-server stop`)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "apiserver-binary", Usage: "kube-apiserver binary of the cluster's version (default: run the kube-apiserver manifest's image in containerd)"},
					&cli.StringFlag{Name: "cri-socket", Value: "/run/containerd/containerd.sock", Usage: "containerd socket, when no binary is given"},
					&cli.DurationFlag{Name: "recovery-ttl", Value: 2 * time.Hour, Usage: "lifetime of its credentials"},
				},
				Action: locked(func(c *cli.Context, e *env) error {
					if err := apiserver.Reap(e.stateDir(c)); err != nil {
						return err
					}
					pkiDir := ""
					if e.cluster != nil {
						pkiDir = e.cluster.PKIDir
					}
					socket := ""
					if c.String("apiserver-binary") == "" {
						socket = c.String("cri-socket")
					}
					srv, err := apiserver.Start(c.Context, e.node, apiserver.Options{Binary: c.String("apiserver-binary"), CRISocket: socket,
						TTL: c.Duration("recovery-ttl"), Now: time.Now(), StateDir: e.stateDir(c), PKIDir: pkiDir})
					if err != nil {
						return withCode(ExitFailed, err)
					}
					fmt.Fprintf(e.out, "recovery API server: pid %d, https://127.0.0.1:%d, credentials valid until %s\n"+
						"kubectl --kubeconfig %s get csr\nstop it with: kubecpr recovery-server stop\n",
						srv.PID, srv.Port, srv.Expires.UTC().Format(time.RFC3339), srv.Kubeconfig)
					return nil
				}),
			},
			{
				Name:  "kubeconfig",
				Usage: "print the path of the recovery server's kubeconfig (0600; its content is never printed)",
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					if _, _, _, ok := apiserver.Running(e.stateDir(c)); !ok {
						return withCode(ExitFailed, fmt.Errorf("no recovery API server is running: kubecpr recovery-server start --apiserver-binary PATH"))
					}
					fmt.Fprintln(e.out, filepath.Join(e.stateDir(c), apiserver.DirName, "kubeconfig"))
					return nil
				},
			},
			{
				Name:  "status",
				Usage: "is a recovery server running, on which port, until when do its credentials last",
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					st, err := recoveryServerStatus(e.stateDir(c))
					if err != nil {
						return err
					}
					if e.machine() {
						return emitOrFail(e, st)
					}
					if !st.Running {
						fmt.Fprintln(e.out, "no recovery API server is running")
						return nil
					}
					fmt.Fprintf(e.out, "recovery API server: pid %d, %s, credentials valid until %s\nkubeconfig (0600): %s\n",
						st.PID, st.URL, st.Expires.Format(time.RFC3339), st.Kubeconfig)
					return nil
				},
			},
			{
				Name:  "stop",
				Usage: "kill a recovery server and delete its credentials",
				Action: locked(func(c *cli.Context, e *env) error {
					if err := apiserver.Reap(e.stateDir(c)); err != nil {
						return err
					}
					fmt.Fprintln(e.out, "no recovery API server is left")
					return nil
				}),
			},
		},
	}
}

// recoveryServerStatus reads the recovery server's record: its pid, port
// and the expiry of its credentials. The kubeconfig is named, never read.
func recoveryServerStatus(stateDir string) (RecoveryServerStatus, error) {
	st := RecoveryServerStatus{TypeMeta: typeMeta(kindRecoveryServerStatus)}
	pid, port, expires, ok := apiserver.Running(stateDir)
	if !ok {
		return st, nil
	}
	t, err := time.Parse(time.RFC3339, expires)
	if err != nil {
		rec := filepath.Join(stateDir, apiserver.DirName, "pid")
		return st, withCode(ExitFailed, fmt.Errorf("%s: the credentials' expiry %q is not RFC 3339: the record is damaged; "+
			"`kubecpr recovery-server stop` tears the server down", rec, expires))
	}
	t = t.UTC()
	st.Running, st.PID, st.Port, st.Expires = true, pid, port, &t
	st.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
	st.Kubeconfig = filepath.Join(stateDir, apiserver.DirName, "kubeconfig")
	return st, nil
}

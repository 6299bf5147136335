package csr

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecpr/kubecpr/recovery/apiserver"
	"github.com/kubecpr/kubecpr/recovery/crashpoint"
	"github.com/kubecpr/kubecpr/recovery/health"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Options of the csr stage: pipeline.CSROptions, set by the CLI in the
// run's options and read here from Data.Options().
type Options = pipeline.CSROptions

// Stage is the csr stage.
var Stage = pipeline.Stage{
	Name:  "csr",
	Short: "approve (and if needed sign) the node CSRs that pass validation, through the node's API server or a temporary recovery API server",
	Live:  true,
	// Mutates: with --bootstrap-token it writes bootstrap-kubelet.conf,
	// so a run that starts at csr (--from csr) takes its backup first.
	Mutates: true,
	Plan:    Plan,
	Undo:    Undo,
}

// Plan plans one action: one or more approval passes.
func Plan(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
	opts := d.Options().CSR
	if d.Live() == nil && opts.APIServerBinary == "" {
		return []pipeline.Action{{
			ID:      "csr/skipped",
			Summary: "would approve pending node CSRs (not the live node: pass --apiserver-binary to run a recovery API server for this root)",
			Run: func(ctx context.Context) (map[string]string, error) {
				return map[string]string{"skipped": "not live"}, nil
			},
		}}, nil
	}
	return []pipeline.Action{{
		ID:      "csr/approve",
		Summary: fmt.Sprintf("approve pending node CSRs that pass validation (sign: %s, wait up to %s)", orAuto(SignMode(opts.Sign)), opts.Wait),
		Run: func(ctx context.Context) (map[string]string, error) {
			return run(ctx, d)
		},
	}}, nil
}

func orAuto(m SignMode) SignMode {
	if m == "" {
		return SignAuto
	}
	return m
}

// nodeAPI returns a client for the node's own API server when it answers.
// apiSettle is how long an API server that answers, but not yet "ok",
// is given before the stage turns to a recovery server.
var apiSettle = 15 * time.Second

func nodeAPI(ctx context.Context, d pipeline.Data) (*kube.Client, bool) {
	cs, ok := nodeAPIAt(ctx, d, "")
	if ok {
		return cs, ok
	}
	// admin.conf names the control-plane endpoint: on an HA cluster
	// another node's API server, which may still be restarting. This
	// node's own serves the same cluster.
	if local, has := health.LocalAPIServer(d); has {
		return nodeAPIAt(ctx, d, local)
	}
	return nil, false
}

// nodeAPIAt is a client with admin.conf's credentials, at its server or at
// host when given, once the server answers /readyz ok.
func nodeAPIAt(ctx context.Context, d pipeline.Data, host string) (*kube.Client, bool) {
	cfg, err := d.Node().RESTConfig(node.KubernetesDir + "/admin.conf")
	if err != nil {
		return nil, false
	}
	if host != "" {
		if cfg.Host == host {
			return nil, false // tried already
		}
		cfg.Host = host
	}
	cfg.Timeout = 3 * time.Second
	cs, err := kube.New(cfg)
	if err != nil {
		return nil, false
	}
	// On a loaded node a healthy API server can miss one 3 s answer (the
	// bounce has just proven it): ask again for apiSettle unless nothing
	// listens at all.
	deadline := time.Now().Add(apiSettle)
	for {
		b, err := cs.Readyz(ctx)
		if err == nil && string(b) == "ok" {
			break
		}
		if (err != nil && errors.Is(err, syscall.ECONNREFUSED)) || time.Now().After(deadline) || ctx.Err() != nil {
			return nil, false
		}
		time.Sleep(500 * time.Millisecond)
	}
	cfg.Timeout = 30 * time.Second
	if cs, err = kube.New(TuneClient(cfg)); err != nil {
		return nil, false
	}
	return cs, true
}

func run(ctx context.Context, d pipeline.Data) (map[string]string, error) {
	opts := d.Options().CSR
	facts := map[string]string{}
	pkiDir := node.DefaultPKIDir
	if c := d.Cluster(); c != nil && c.PKIDir != "" {
		pkiDir = c.PKIDir
	}
	ca, err := loadCA(d.Node(), pkiDir)
	if err != nil && SignMode(opts.Sign) != SignNever {
		return nil, err
	}
	server := ""
	cs, ok := nodeAPI(ctx, d)
	if ok {
		server, _ = adminServer(d)
		facts["api"] = "node"
		fmt.Fprintln(d.Out(), "      the node's API server answers: approving through it")
	} else {
		if opts.APIServerBinary == "" && opts.CRISocket == "" {
			return nil, errors.New("the node's API server does not answer and no recovery server can be started: pass --apiserver-binary PATH " +
				"(a kube-apiserver binary of the cluster's version) or --cri-socket, or bring the API back with the bounce stage first")
		}
		if err := apiserver.Reap(opts.StateDir); err != nil {
			return nil, err
		}
		etcd, err := apiserver.EnsureEtcd(ctx, d.Node(), opts.EtcdBinary, opts.StateDir, pkiDir)
		if err != nil {
			return nil, err
		}
		if etcd != nil {
			fmt.Fprintf(d.Out(), "      the node's etcd did not answer: started it from its manifest for the duration (pid %d)\n", etcd.PID)
			defer func() {
				etcd.Stop()
				fmt.Fprintln(d.Out(), "      etcd started by kubecpr stopped")
			}()
			facts["etcd"] = "started"
		}
		start := time.Now()
		srv, err := apiserver.Start(ctx, d.Node(), apiserver.Options{Binary: opts.APIServerBinary, CRISocket: opts.CRISocket, TTL: opts.RecoveryTTL,
			Now: time.Now(), StateDir: opts.StateDir, PKIDir: pkiDir})
		if err != nil {
			return nil, err
		}
		// Torn down on success, failure and interrupt (the context).
		defer func() {
			if err := srv.Stop(); err == nil {
				fmt.Fprintln(d.Out(), "      recovery API server stopped and its credentials deleted")
			}
		}()
		fmt.Fprintf(d.Out(), "      recovery API server on https://127.0.0.1:%d (pid %d), ready in %s, credentials valid until %s\n",
			srv.Port, srv.PID, time.Since(start).Round(time.Millisecond), srv.Expires.UTC().Format(time.RFC3339))
		facts["api"] = "recovery"
		facts["recovery_port"] = strconv.Itoa(srv.Port)
		server = fmt.Sprintf("https://127.0.0.1:%d", srv.Port)
		if cs, err = recoveryClient(srv.Kubeconfig); err != nil {
			return nil, err
		}
		if opts.Ready != nil {
			opts.Ready(srv.Kubeconfig)
		}
		crashpoint.At("csr-recovery-server-ready")
	}
	if opts.BootstrapToken > 0 {
		caPEM, err := d.Node().ReadFile(path.Join(pkiDir, "ca.crt"))
		if err != nil {
			return nil, err
		}
		bf, err := createBootstrapToken(ctx, d, cs, server, caPEM, opts.BootstrapToken)
		if err != nil {
			return nil, err
		}
		for k, v := range bf {
			facts[k] = v
		}
	}
	nodes := map[string]Node{}
	if c := d.Cluster(); c != nil && c.NodeName != "" {
		nodes[c.NodeName] = Node{Name: c.NodeName, Addresses: []string{c.AdvertiseAddress}}
	}
	if err := NodesFromAPI(ctx, cs, nodes); err != nil {
		fmt.Fprintf(d.Out(), "      note: could not list Node objects (%v): only this node's CSRs can be approved\n", err)
	}
	a := &Approver{Client: cs, CA: ca, Sign: orAuto(SignMode(opts.Sign)), Out: d.Out(), DryRun: d.Options().DryRun,
		Policy: Policy{Nodes: nodes, MaxLifetime: opts.MaxLifetime, OnlyNode: opts.ApproveNode}}
	want := opts.ApproveNode
	if want == "" && d.Cluster() != nil {
		want = d.Cluster().NodeName
	}
	deadline := time.Now().Add(opts.Wait)
	approved, signed, refused := map[string]bool{}, 0, map[string]bool{}
	rounds := map[string]bool{} // signer → seen for the expected node
	for {
		res, err := a.Pass(ctx)
		if err != nil {
			return nil, err
		}
		for _, dcs := range res.Approved {
			approved[dcs.Name] = true
			if dcs.Node == want {
				rounds[dcs.Signer] = true
			}
		}
		for _, r := range res.Refused {
			refused[r.Name] = true
		}
		signed += len(res.Signed)
		if opts.Wait == 0 || (rounds[SignerClientKubelet] && rounds[SignerKubeletServing]) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if facts["api"] == "recovery" && len(approved) > 0 {
		// The kubelets poll for their certificates: give them time to
		// fetch what was just signed before the server goes away.
		linger := opts.Linger
		if linger == 0 {
			linger = 10 * time.Second
		}
		fmt.Fprintf(d.Out(), "      keeping the recovery API server up %s so the kubelets can fetch their certificates\n", linger)
		select {
		case <-ctx.Done():
		case <-time.After(linger):
		}
	}
	facts["approved"] = strconv.Itoa(len(approved))
	facts["signed"] = strconv.Itoa(signed)
	facts["refused"] = strconv.Itoa(len(refused))
	fmt.Fprintf(d.Out(), "      %d approved, %d signed by kubecpr, %d refused\n", len(approved), signed, len(refused))
	if opts.Wait > 0 && !(rounds[SignerClientKubelet] && rounds[SignerKubeletServing]) {
		fmt.Fprintf(d.Out(), "      note: within %s node %s did not file both a client and a serving CSR (client: %v, serving: %v)\n",
			opts.Wait, want, rounds[SignerClientKubelet], rounds[SignerKubeletServing])
	}
	return facts, nil
}

// recoveryClient is the stage's client of its recovery API server: the
// server's own kubeconfig, with the stage's limits (TuneClient).
func recoveryClient(kubeconfig string) (*kube.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 30 * time.Second
	return kube.New(TuneClient(cfg))
}

func loadCA(n *node.Node, pkiDir string) (*pki.CA, error) {
	cb, err := n.ReadFile(path.Join(pkiDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	cert, err := pki.ParseCertificate(cb)
	if err != nil {
		return nil, err
	}
	ca := &pki.CA{Name: "ca", Cert: cert}
	if kb, err := n.ReadFile(path.Join(pkiDir, "ca.key")); err == nil {
		if ca.Key, err = pki.ParsePrivateKey(kb); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

func adminServer(d pipeline.Data) (string, error) {
	k, err := d.Node().Kubeconfig(node.KubernetesDir + "/admin.conf")
	if err != nil {
		return "", err
	}
	if k.Cluster == nil {
		return "", errors.New("admin.conf: the current context names no cluster")
	}
	return k.Server(), nil
}

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kubecpr/kubecpr/phases/csr"
	"github.com/kubecpr/kubecpr/recovery/bootstraptoken"
	cinv "github.com/kubecpr/kubecpr/recovery/cluster/inventory"
	"github.com/kubecpr/kubecpr/recovery/cluster/transport"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
)

// TokenNodePath is where a worker's bootstrap token is put (0600) until
// the worker's run has written bootstrap-kubelet.conf with it; it is
// removed afterwards.
const TokenNodePath = "/var/lib/kubecpr/incoming/bootstrap-token"

// Defaults of --workers bootstrap.
const (
	DefaultBootstrapTTL  = time.Hour       // the token's lifetime (it is deleted when the phase ends anyway)
	DefaultBootstrapWait = 5 * time.Minute // how long one worker's kubelet may take to authenticate again
)

// workers runs phase 3 in the run's --workers mode.
func (d *Driver) workers(ctx context.Context, workers []cinv.Node) error {
	if d.o.Workers != "bootstrap" {
		return d.step(ctx, PhaseWorkers, workers, d.o.Parallel, d.worker)
	}
	var todo []cinv.Node
	for _, n := range workers {
		if !d.done(PhaseWorkers + "/" + n.Name) {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return d.step(ctx, PhaseWorkers, workers, d.o.Parallel, nil) // every worker done earlier
	}
	b, err := d.startBootstrap(ctx, workers)
	if err != nil {
		return fmt.Errorf("phase %s: %w\nnothing was changed on the workers; `kubecpr cluster resume` tries again", PhaseWorkers, err)
	}
	err = d.step(ctx, PhaseWorkers, workers, d.o.Parallel, b.worker)
	if serr := b.stop(err == nil); serr != nil && err == nil {
		err = serr
	}
	return err
}

// bootstrapper is --workers bootstrap: one short-lived bootstrap token for
// the phase, pushed to every worker (bootstrap-kubelet.conf written by the
// worker's own journaled run, kubelet restarted), and a careful approver
// running beside them that approves the client CSRs of the inventory's
// workers only — every other CSR is refused and reported.
type bootstrapper struct {
	d        *Driver
	cs       *kube.Client
	tok      bootstraptoken.Token
	approver *csr.Approver
	out      io.WriteCloser
	cancel   context.CancelFunc
	stopped  chan struct{}

	mu       sync.Mutex
	approved map[string]string // node → its approved client CSR
	refused  map[string]csr.Decision
	passErr  error
}

// adminClient is a client of the recovered API server with admin.conf of
// the control-plane tree on this machine (the driving node, or --ca-from).
func (d *Driver) adminClient() (*kube.Client, string, error) {
	if d.o.Control == nil {
		return nil, "", errors.New("the recovered API is reached with admin.conf of a control-plane tree on this machine (for --workers bootstrap's token, and cluster-info after --renew-ca): run kubecpr cluster on a control-plane node, or pass --ca-from NODE (a root: control-plane node of the inventory)")
	}
	const admin = node.KubernetesDir + "/admin.conf"
	cfg, err := d.o.Control.RESTConfig(admin)
	if err != nil {
		return nil, "", fmt.Errorf("the recovered API is reached with %s: %w", d.o.Control.Path(admin), err)
	}
	cfg.Timeout = 30 * time.Second
	cs, err := kube.New(csr.TuneClient(cfg))
	return cs, cfg.Host, err
}

func (d *Driver) startBootstrap(ctx context.Context, workers []cinv.Node) (*bootstrapper, error) {
	cs, host, err := d.adminClient()
	if err != nil {
		return nil, err
	}
	ttl := d.o.BootstrapTTL
	if ttl <= 0 {
		ttl = DefaultBootstrapTTL
	}
	tok, err := bootstraptoken.Create(ctx, cs, time.Now(), ttl, "created by kubecpr cluster run "+d.runID+" for the workers' kubelets to re-bootstrap")
	if err != nil {
		return nil, fmt.Errorf("the API server at %s (admin.conf of %s): %w", host, d.o.Control.Root, err)
	}
	fmt.Fprintf(d.o.Out, "[bootstrap] token %s created through %s, valid until %s; deleted when the workers are done\n",
		tok.ID, host, tok.Expires.Format(time.RFC3339))

	nodes := map[string]csr.Node{}
	allowed := map[string]bool{}
	for _, n := range workers {
		nd := csr.Node{Name: n.Name}
		if n.Address != "" {
			nd.Addresses = append(nd.Addresses, n.Address)
		}
		nodes[n.Name] = nd
		allowed[n.Name] = true
	}
	if err := csr.NodesFromAPI(ctx, cs, nodes); err != nil {
		fmt.Fprintf(d.o.Out, "[bootstrap] note: could not list Node objects (%v): the inventory's addresses are used\n", err)
	}
	sign := csr.SignAuto
	if d.o.CA == nil || d.o.CA.Key == nil {
		sign = csr.SignNever // the controller-manager signs
	}
	out := transport.PrefixWriter(d.o.Out, "[approver] ")
	b := &bootstrapper{d: d, cs: cs, tok: tok, out: out, stopped: make(chan struct{}),
		approved: map[string]string{}, refused: map[string]csr.Decision{},
		approver: &csr.Approver{Client: cs, CA: d.o.CA, Sign: sign, Out: out,
			Policy: csr.Policy{Nodes: nodes, AllowedNodes: allowed}}}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b.cancel = cancel
	go b.loop(actx)
	return b, nil
}

// loop approves, once a second, the pending CSRs the policy allows.
func (b *bootstrapper) loop(ctx context.Context) {
	defer close(b.stopped)
	for {
		res, err := b.approver.Pass(ctx)
		b.mu.Lock()
		for _, dc := range res.Approved {
			if dc.Signer == csr.SignerClientKubelet {
				b.approved[dc.Node] = dc.Name
			}
		}
		for _, dc := range res.Refused {
			b.refused[dc.Name] = dc
		}
		if err != nil && ctx.Err() == nil {
			b.passErr = err
			fmt.Fprintf(b.out, "%v\n", err)
		}
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// stop ends the approver, reports the CSRs refused during the phase and,
// when every worker is done, deletes the token (it stops authenticating at
// once). After a failure the token is kept until it expires: a worker
// whose journaled run already wrote bootstrap-kubelet.conf with it keeps
// using it when `kubecpr cluster resume` continues within that time.
func (b *bootstrapper) stop(success bool) error {
	b.cancel()
	<-b.stopped
	b.out.Close()
	var err error
	if success {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err = bootstraptoken.Delete(ctx, b.cs, b.tok.ID); err == nil {
			fmt.Fprintf(b.d.o.Out, "[bootstrap] token %s deleted\n", b.tok.ID)
		} else {
			err = fmt.Errorf("%w: it expires at %s by itself; delete it sooner with `kubectl -n kube-system delete secret bootstrap-token-%s`", err, b.tok.Expires.Format(time.RFC3339), b.tok.ID)
		}
	} else {
		fmt.Fprintf(b.d.o.Out, "[bootstrap] token %s kept until it expires at %s: the workers that wrote it use it when the run is resumed before then (after that, roll the worker back and run again); delete it with `kubectl -n kube-system delete secret bootstrap-token-%s`\n",
			b.tok.ID, b.tok.Expires.Format(time.RFC3339), b.tok.ID)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.refused) > 0 {
		names := make([]string, 0, len(b.refused))
		for n := range b.refused {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(b.d.o.Out, "[bootstrap] %d CSR(s) refused (left pending for an operator to judge):\n", len(names))
		for _, n := range names {
			dc := b.refused[n]
			fmt.Fprintf(b.d.o.Out, "[bootstrap]   %s (node %q, %s): %s\n", n, dc.Node, dc.Signer, dc.Reason)
		}
	}
	return err
}

// Refused lists the CSRs refused so far (name → reason).
func (b *bootstrapper) Refused() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]string{}
	for n, dc := range b.refused {
		out[n] = dc.Reason
	}
	return out
}

// worker pushes the token to one worker, has its run write
// bootstrap-kubelet.conf (journaled) and restart the kubelet, then waits
// until the kubelet authenticates as system:node:NAME with the certificate
// it got through the approved CSR.
func (b *bootstrapper) worker(ctx context.Context, n cinv.Node) error {
	d := b.d
	t, err := d.conn(ctx, n)
	if err != nil {
		return err
	}
	dst := hostPath(n, TokenNodePath)
	if err := d.incomingDir(ctx, t, n, dst); err != nil {
		return err
	}
	if err := t.Upload(ctx, strings.NewReader(b.tok.Value()+"\n"), dst, 0o600); err != nil {
		return fmt.Errorf("copying the bootstrap token to %s: %w", dst, err)
	}
	ca, err := d.caArgs(ctx, n, true)
	if err != nil {
		return err
	}
	_, runErr := d.kubecpr(ctx, n, false, d.runArgs(n, append([]string{"--until", "bounce", "--kubelet-bootstrap-token-file", dst}, ca...)...)...)
	// The token is a secret: it does not outlive the run (the node keeps it
	// only inside bootstrap-kubelet.conf, 0600, until it expires).
	if err := t.Run(ctx, []string{"rm", "-f", dst}, io.Discard, io.Discard); err != nil && runErr == nil {
		return fmt.Errorf("removing %s: %w", dst, err)
	}
	if runErr != nil {
		return runErr
	}
	wait := d.o.BootstrapWait
	if wait <= 0 {
		wait = DefaultBootstrapWait
	}
	want := "system:node:" + n.Name
	deadline := time.Now().Add(wait)
	var last string
	for {
		out, err := d.kubecprQuiet(ctx, n, "kubelet-auth")
		user := strings.TrimSpace(out)
		if err == nil && user == want {
			b.mu.Lock()
			name := b.approved[n.Name]
			b.mu.Unlock()
			if name != "" {
				fmt.Fprintf(d.o.Out, "[%s] kubelet re-bootstrapped: CSR %s approved, authenticates as %s\n", n.Name, name, user)
			} else {
				fmt.Fprintf(d.o.Out, "[%s] kubelet authenticates as %s\n", n.Name, user)
			}
			// Now that the kubelet holds its new certificate, the node's
			// run verifies it and is complete.
			return d.closeWorkerRun(ctx, n)
		}
		switch {
		case err != nil:
			last = lastLine(err.Error())
		default:
			last = fmt.Sprintf("authenticates as %q", user)
		}
		if time.Now().After(deadline) {
			b.mu.Lock()
			approved := b.approved[n.Name]
			b.mu.Unlock()
			why := "no client CSR of this node was approved"
			if approved != "" {
				why = "its CSR " + approved + " was approved, but the kubelet did not install the certificate"
			}
			return fmt.Errorf("the kubelet did not authenticate as %s within %s (%s; last: %s): check the kubelet's log on the node (it needs --bootstrap-kubeconfig=%s, as kubeadm's drop-in sets), and the CSRs refused above",
				want, wait, why, last, "/etc/kubernetes/bootstrap-kubelet.conf")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// kubecprQuiet runs the node's kubecpr for a poll: stdout returned, stderr
// kept for the error only (a poll failing until it succeeds is not news).
func (d *Driver) kubecprQuiet(ctx context.Context, n cinv.Node, args ...string) (string, error) {
	t, err := d.conn(ctx, n)
	if err != nil {
		return "", err
	}
	argv := d.argv(n, args...)
	var out, errb bytes.Buffer
	if err := t.Run(ctx, argv, &out, &errb); err != nil {
		if msg := strings.TrimSpace(errb.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return out.String(), err
	}
	return out.String(), nil
}

// incomingDir makes the directory of an incoming file (0700) on a local
// node; on an SSH node Prepare made it with the upload's one session.
func (d *Driver) incomingDir(ctx context.Context, t transport.Transport, n cinv.Node, file string) error {
	if n.SSH != nil {
		return nil
	}
	if err := t.Run(ctx, []string{"mkdir", "-p", "-m", "0700", filepath.Dir(file)}, io.Discard, io.Discard); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(file), err)
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// checkWorkersMode refuses, before any change, a --workers mode the
// inventory cannot do: bootstrap needs every worker's kubelet restarted
// (a copy of a node has no kubelet to request a certificate) and
// admin.conf on this machine.
func (d *Driver) checkWorkersMode() error {
	switch d.o.Workers {
	case "bundle":
		return nil
	case "bootstrap":
	default:
		return fmt.Errorf("--workers %q: want bundle or bootstrap", d.o.Workers)
	}
	var copies []string
	for _, n := range d.o.Inventory.Workers() {
		if !d.live(n) {
			copies = append(copies, n.Name)
		}
	}
	if len(copies) > 0 {
		return fmt.Errorf("--workers bootstrap: worker(s) %s of %s are copies of nodes (root: without --kubelet-restart-command or --cri-socket): no kubelet there would request a certificate; use --workers bundle, or give those nodes args that restart their kubelet",
			strings.Join(copies, ", "), d.o.Inventory.Source)
	}
	if len(d.o.Inventory.Workers()) > 0 {
		_, _, err := d.adminClient()
		return err
	}
	return nil
}

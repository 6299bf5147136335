// Package verify is the last stage: every credential on the node is valid
// at the run's clock and chains to its CA; on the live node, the cluster
// itself is asked: every control-plane component is healthy and serves its
// renewed certificate, the API answers with the renewed admin.conf, and
// nothing kubecpr started is left running.
package verify

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kubecpr/kubecpr/recovery/apiserver"
	"github.com/kubecpr/kubecpr/recovery/health"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/kube"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Components are the static pods verify asks, in order.
var Components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// LiveTimeout bounds how long verify waits for each component to answer.
var LiveTimeout = 60 * time.Second

// Stage is the verify stage.
var Stage = pipeline.Stage{
	Name:  "verify",
	Short: "prove every certificate is valid and chains to its CA; on the live node, ask the cluster",
	Plan: func(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
		acts := []pipeline.Action{{
			ID:      "verify/certificates",
			Summary: "re-read every credential at the run's clock",
			Run:     func(ctx context.Context) (map[string]string, error) { return certificates(d) },
		}}
		if d.Live() != nil {
			acts = append(acts, pipeline.Action{
				ID:      "verify/live",
				Summary: "ask the cluster: each component healthy and serving its renewed certificate, the API answering with the renewed admin.conf, no recovery server left",
				Run:     func(ctx context.Context) (map[string]string, error) { return live(ctx, d) },
			})
		}
		return acts, nil
	},
}

func certificates(d pipeline.Data) (map[string]string, error) {
	inv, err := d.Inventory()
	if err != nil {
		return nil, err
	}
	o := d.Options()
	var bad []string
	for _, it := range inv.Sorted() {
		if it.Kind == inventory.KindUserKubeconfig && !o.UpdateUserKubeconfigs {
			if it.Status != pki.StatusOK {
				fmt.Fprintf(d.Out(), "      note: %s is still %s (not refreshed without --update-user-kubeconfigs)\n", it.Path, it.Status)
			}
			continue
		}
		if it.Kind == inventory.KindKubeletServer && it.Status.Severity() >= 2 {
			// kubecpr never writes it: the kubelet requests it itself
			// (serverTLSBootstrap) once it runs with a valid client
			// certificate, and it arrives when its CSR is approved and signed.
			fmt.Fprintf(d.Out(), "      note: %s is still %s: the kubelet requests a new one with a kubelet-serving CSR when it restarts; "+
				"`kubecpr check` shows it renewed once that CSR is approved and signed\n", it.Path, it.Status)
			continue
		}
		msg := fmt.Sprintf("%s (%s) is %s", it.Name, it.Path, it.Status)
		switch {
		case it.Status.Severity() >= 2:
		case it.Status == pki.StatusExpiring && cappedByCA(inv, it):
			// Renewed, but its CA expires first: kubeadm caps it there too.
			fmt.Fprintf(d.Out(), "      note: %s expires %s with its CA %q (a leaf cannot outlive its CA): renew the CA before then (docs/expired-ca.md)\n",
				it.Path, it.Cert.NotAfter.UTC().Format(time.RFC3339), it.CAName)
			continue
		case it.Status == pki.StatusExpiring && validity(d) > inv.Warn && o.RenewWithin == 0:
			// Renewed for longer than --warn, yet expiring within it: it
			// was not renewed.
			msg += fmt.Sprintf(" (expires %s, within --warn %s although this run issues %s)", it.Cert.NotAfter.UTC().Format(time.RFC3339), inv.Warn, validity(d))
		default:
			continue
		}
		if len(it.Problems) > 0 {
			msg += ": " + strings.Join(it.Problems, "; ")
		}
		bad = append(bad, msg)
	}
	if len(bad) > 0 {
		return nil, errors.New("after renewal, still not valid:\n  " + strings.Join(bad, "\n  "))
	}
	fmt.Fprintf(d.Out(), "      %s\n", inv.Summary())
	return map[string]string{"certificates": strconv.Itoa(len(inv.Items)), "worst": string(inv.Worst())}, nil
}

// validity is the lifetime the certs stage issued: --validity, else the
// kubeadm config's certificateValidityPeriod, else one year.
func validity(d pipeline.Data) time.Duration {
	if v := d.Options().Validity; v != 0 {
		return v
	}
	if c := d.Cluster(); c != nil && c.CertificateValidity != 0 {
		return c.CertificateValidity
	}
	return 365 * 24 * time.Hour
}

// cappedByCA tells whether a leaf ends when its CA does (issued capped).
func cappedByCA(inv *inventory.Inventory, it *inventory.Item) bool {
	for _, c := range inv.CAs {
		if c.Name == it.CAName && c.CA != nil && c.CA.Cert != nil && it.Cert != nil {
			d := c.CA.Cert.NotAfter.Sub(it.Cert.NotAfter)
			return d >= 0 && d < time.Minute
		}
	}
	return false
}

// liveTimeout is LiveTimeout, or the run's --component-timeout when that
// is shorter.
func liveTimeout(d pipeline.Data) time.Duration {
	if lv := d.Live(); lv != nil && lv.ComponentTimeout > 0 && lv.ComponentTimeout < LiveTimeout {
		return lv.ComponentTimeout
	}
	return LiveTimeout
}

func live(ctx context.Context, d pipeline.Data) (map[string]string, error) {
	facts := map[string]string{}
	var bad []string
	for _, c := range Components {
		if !d.Node().Exists(path.Join(health.ManifestsDir(d), c+".yaml")) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, liveTimeout(d))
		serial, err := health.Wait(cctx, d, c)
		cancel()
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", c, err))
			continue
		}
		if serial != "" {
			facts["serial."+c] = serial
			fmt.Fprintf(d.Out(), "      %s healthy, serving serial %s\n", c, serial)
		} else {
			fmt.Fprintf(d.Out(), "      %s healthy\n", c)
		}
	}
	if d.Node().Exists(node.KubernetesDir + "/admin.conf") {
		cfg, err := d.Node().RESTConfig(node.KubernetesDir + "/admin.conf")
		if err == nil {
			cfg.Timeout = 10 * time.Second
			var cs *kube.Client
			if cs, err = kube.New(cfg); err == nil {
				// admin.conf names the control-plane endpoint: on an HA
				// cluster another node's API server (or a load balancer in
				// front of them) that may still be restarting while this
				// node is done. It is given the live timeout to answer.
				deadline := time.Now().Add(liveTimeout(d))
				waited := false
				for {
					var v fmt.Stringer
					if v, err = cs.ServerVersion(ctx); err == nil {
						fmt.Fprintf(d.Out(), "      the API at %s answers admin.conf (%s)\n", cfg.Host, v)
						facts["api"] = cfg.Host
						break
					}
					if time.Now().After(deadline) || ctx.Err() != nil {
						break
					}
					if !waited {
						fmt.Fprintf(d.Out(), "      waiting for the API at %s (admin.conf's server: %v)\n", cfg.Host, err)
						waited = true
					}
					time.Sleep(time.Second)
				}
			}
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("the API does not answer with the renewed admin.conf: %v", err))
		}
	}
	stateDir := filepath.Dir(filepath.Dir(d.BackupDir()))
	if pid, port, _, ok := apiserver.Running(stateDir); ok {
		bad = append(bad, fmt.Sprintf("a recovery API server started by kubecpr is still running (pid %d, port %d): `kubecpr recovery-server stop`", pid, port))
	}
	if len(bad) > 0 {
		return nil, errors.New("the cluster does not confirm the recovery:\n  " + strings.Join(bad, "\n  "))
	}
	return facts, nil
}

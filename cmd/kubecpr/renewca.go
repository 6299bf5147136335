package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/atomicfile"
	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/node"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// caChoice is --renew-ca's value: given alone (`--renew-ca`) it picks every
// CA that is expired, not yet valid or expiring within --warn; given a list
// (`--renew-ca=ca,etcd-ca`) exactly those. Its recorded form (String) is
// "" (not given), "due", or the list, and Set reads it back (resume).
type caChoice struct {
	set   bool
	names []string
}

// The CAs kubeadm makes, by their inventory names.
var caNames = []string{"ca", "front-proxy-ca", "etcd-ca"}

func (c *caChoice) IsBoolFlag() bool { return true }

func (c *caChoice) Set(s string) error {
	switch s {
	case "", "false":
		*c = caChoice{}
		return nil
	case "true", "due":
		*c = caChoice{set: true}
		return nil
	}
	var names []string
	for _, n := range splitList(s) {
		ok := false
		for _, k := range caNames {
			ok = ok || n == k
		}
		if !ok {
			return fmt.Errorf("%q is not a CA kubecpr renews: want %s", n, strings.Join(caNames, ", "))
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return fmt.Errorf("no CA named: give --renew-ca alone (every CA that is due) or --renew-ca=%s", strings.Join(caNames, ","))
	}
	*c = caChoice{set: true, names: names}
	return nil
}

func (c *caChoice) String() string {
	switch {
	case c == nil || !c.set:
		return ""
	case len(c.names) == 0:
		return "due"
	}
	return strings.Join(c.names, ",")
}

func (c *caChoice) Get() any { return c.String() }

func renewCAFlag() cli.Flag {
	return &cli.GenericFlag{Name: "renew-ca", Value: &caChoice{},
		Usage: "re-issue expired CA certificates with their own keys (every leaf they signed stays valid): alone, every CA expired or expiring within --warn; " +
			"--renew-ca=ca,front-proxy-ca,etcd-ca names them (docs/expired-ca.md)"}
}

// renewCAOption is the pipeline's view of --renew-ca.
func renewCAOption(c *cli.Context) pipeline.CARenewal {
	v, _ := c.Generic("renew-ca").(*caChoice)
	if v == nil || !v.set {
		return pipeline.CARenewal{}
	}
	return pipeline.CARenewal{Enabled: true, Names: v.names}
}

// clusterCAs handles `cluster run --renew-ca`: the flag does not go to the
// node runs (each would re-issue its own certificate); instead the CAs are
// re-issued once here, from the control-plane tree on this machine, kept
// in STATE/cluster/ca/NAME.crt (a continued run installs the same bytes),
// and shipped to every node with --ca-certificate. It returns the node
// runs' flags without --renew-ca and the certificates by CA name.
func clusterCAs(e *env, stateDir string, control *node.Node, runArgs []string, continuing, dryRun bool) ([]string, map[string][]byte, error) {
	var rest []string
	choice := &caChoice{}
	for _, a := range runArgs {
		if v, ok := strings.CutPrefix(a, "--renew-ca="); ok {
			if err := choice.Set(v); err != nil {
				return nil, nil, withCode(ExitFailed, fmt.Errorf("--renew-ca: %w", err))
			}
			continue
		}
		rest = append(rest, a)
	}
	if !choice.set {
		return rest, nil, nil
	}
	dir := filepath.Join(stateDir, "cluster", "ca")
	out := map[string][]byte{}
	if continuing {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, nil, withCode(ExitJournal, fmt.Errorf("the open cluster run was started with --renew-ca but its CA certificates are gone from %s: %w; `kubecpr cluster rollback` and start again", dir, err))
		}
		for _, en := range ents {
			if name, ok := strings.CutSuffix(en.Name(), ".crt"); ok {
				b, err := os.ReadFile(filepath.Join(dir, en.Name()))
				if err != nil {
					return nil, nil, withCode(ExitJournal, err)
				}
				out[name] = b
			}
		}
		return rest, out, nil
	}
	if control == nil {
		return nil, nil, withCode(ExitPrecondition, errors.New("--renew-ca: the CAs are re-issued with their keys on this machine: run kubecpr cluster on a control-plane node (its --root), or pass --ca-from a root: control-plane node of the inventory"))
	}
	inv, err := inventory.Build(control, e.cluster, e.now, e.warn)
	if err != nil {
		return nil, nil, withCode(ExitPrecondition, fmt.Errorf("--renew-ca: reading the CAs of %s: %w", control.Root, err))
	}
	want := pipeline.CARenewal{Enabled: true, Names: choice.names}
	validity := node.DefaultCACertificateValidity
	if e.cluster != nil {
		validity = e.cluster.CAValidity()
	}
	if !dryRun {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, withCode(ExitFailed, err)
		}
	}
	for _, c := range inv.CAs {
		due := c.Status == pki.StatusExpired || c.Status == pki.StatusNotYetValid || c.Status == pki.StatusExpiring
		if c.CA == nil || !want.Wants(c.Name, due) {
			continue
		}
		renewed, err := pki.RenewCA(c.CA, pki.RenewOptions{Now: e.now, Validity: validity})
		if err != nil {
			return nil, nil, withCode(ExitPrecondition, fmt.Errorf("--renew-ca: %s: %w", control.Path(c.CertPath), err))
		}
		b := pki.EncodeCertificate(renewed)
		if dryRun {
			out[c.Name] = b
			fmt.Fprintf(e.out, "would re-issue the %s CA certificate (%s, %s until %s) with its own key, once, and install it on every node\n",
				c.Name, control.Path(c.CertPath), c.Status, c.CA.Cert.NotAfter.UTC().Format("2006-01-02"))
			continue
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, c.Name+".crt"), b, atomicfile.Options{Mode: 0o644}); err != nil {
			return nil, nil, withCode(ExitFailed, err)
		}
		out[c.Name] = b
		fmt.Fprintf(e.out, "re-issued the %s CA certificate with its own key (until %s, discovery hash %s): every node gets it\n",
			c.Name, renewed.NotAfter.UTC().Format("2006-01-02"), pki.PublicKeyPin(renewed))
	}
	for _, n := range choice.names {
		if _, ok := out[n]; !ok {
			return nil, nil, withCode(ExitPrecondition, fmt.Errorf("--renew-ca=%s: %s has no readable %s CA with its key", strings.Join(choice.names, ","), control.Root, n))
		}
	}
	return rest, out, nil
}

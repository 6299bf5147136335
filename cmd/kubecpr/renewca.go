package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kubecpr/kubecpr/recovery/pipeline"
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

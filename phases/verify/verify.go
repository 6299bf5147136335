// Package verify is the last stage: every credential on the node is valid
// at the run's clock and chains to its CA.
package verify

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/kubecpr/kubecpr/recovery/inventory"
	"github.com/kubecpr/kubecpr/recovery/pipeline"
	"github.com/kubecpr/kubecpr/recovery/pki"
)

// Stage is the verify stage.
var Stage = pipeline.Stage{
	Name:  "verify",
	Short: "prove every certificate is valid and chains to its CA",
	Plan: func(ctx context.Context, d pipeline.Data) ([]pipeline.Action, error) {
		return []pipeline.Action{{
			ID:      "verify/certificates",
			Summary: "re-read every credential at the run's clock",
			Run: func(ctx context.Context) (map[string]string, error) {
				inv, err := d.Inventory()
				if err != nil {
					return nil, err
				}
				var bad []string
				for _, it := range inv.Sorted() {
					if it.Kind == inventory.KindUserKubeconfig && !d.Options().UpdateUserKubeconfigs {
						if it.Status != pki.StatusOK {
							fmt.Fprintf(d.Out(), "      note: %s is still %s (not refreshed without --update-user-kubeconfigs)\n", it.Path, it.Status)
						}
						continue
					}
					if it.Status.Severity() >= 2 {
						msg := fmt.Sprintf("%s (%s) is %s", it.Name, it.Path, it.Status)
						if len(it.Problems) > 0 {
							msg += ": " + strings.Join(it.Problems, "; ")
						}
						bad = append(bad, msg)
					}
				}
				if len(bad) > 0 {
					return nil, errors.New("after renewal, still not valid:\n  " + strings.Join(bad, "\n  "))
				}
				fmt.Fprintf(d.Out(), "      %s\n", inv.Summary())
				return map[string]string{"certificates": strconv.Itoa(len(inv.Items)), "worst": string(inv.Worst())}, nil
			},
		}}, nil
	},
}

package inventory_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubecpr/kubecpr/recovery/cluster/inventory"
)

// FuzzLoad: Load never panics, whatever the file holds, and what it accepts
// is valid. Seeded with every sample in testdata/inventory.
func FuzzLoad(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join(testdata, "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range seeds {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	// One file per fuzzing process, rewritten for each input: a worker runs
	// its inputs one at a time.
	p := filepath.Join(f.TempDir(), "inventory.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		inv, err := inventory.Load(p)
		if err != nil {
			return
		}
		if err := inv.Validate(); err != nil {
			t.Errorf("Load accepted an invalid inventory: %v", err)
		}
		_ = inventory.CrossCheck(inv, inventory.ClusterFacts{EtcdMembers: map[string]string{"cp1": "https://127.0.0.1:2380"}})
	})
}

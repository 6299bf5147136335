package kubeadmbed

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

func size(t *testing.T, env string, def int) int {
	if v := os.Getenv(env); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	return def
}

func TestBedUp(t *testing.T) {
	b := New(t, Options{ControlPlanes: size(t, "KUBEADMBED_CP", 3), Workers: size(t, "KUBEADMBED_WORKERS", 2)})
	load, _ := exec.Command("uptime").Output()
	t.Logf("bed up in %s (%s)", b.Up, load)
	for _, p := range b.Phases {
		t.Logf("  %s: %s", p.Name, p.Took)
	}
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubecpr/kubecpr/recovery/runtime"
	"github.com/kubecpr/kubecpr/test/ociimage"
)

// helloImage holds test/ctrd's static program (prints its arguments,
// waits for SIGTERM): a pod's long-running process.
func helloImage(t *testing.T, name string) ociimage.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hello")
	cmd := exec.Command("go", "build", "-o", bin, "../ctrd/testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build hello: %v\n%s", err, b)
	}
	return ociimage.Image{Name: name, Entrypoint: []string{"/hello"}, Files: []ociimage.File{{Path: "/hello", Mode: 0o755, SourcePath: bin}}}
}

// mountedByKey lists the running containers by NAMESPACE/POD/CONTAINER.
func (cn *containerNode) mountedByKey(t *testing.T) map[string]runtime.Mounted {
	t.Helper()
	rt, err := runtime.NewContainerd(cn.d.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	cs, err := rt.Mounted(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]runtime.Mounted{}
	for _, c := range cs {
		out[c.Namespace+"/"+c.Pod+"/"+c.Name] = c
	}
	return out
}

func processAlive(pid uint32) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

//go:build deps

// Package deps pins the product module's chosen dependencies in go.mod while
// packages that use them are being written (go mod tidy honours all tags).
package deps

import (
	_ "github.com/containerd/containerd/v2/client"
	_ "github.com/containerd/containerd/v2/core/images"
	_ "github.com/containerd/containerd/v2/pkg/cio"
	_ "github.com/containerd/containerd/v2/pkg/namespaces"
	_ "github.com/containerd/containerd/v2/pkg/oci"
	_ "github.com/containerd/errdefs"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/opencontainers/go-digest"
	_ "github.com/opencontainers/image-spec/specs-go/v1"
	_ "github.com/opencontainers/runtime-spec/specs-go"
	_ "github.com/urfave/cli/v2"
	_ "golang.org/x/sys/unix"
	_ "gopkg.in/yaml.v3"
	_ "k8s.io/api/certificates/v1"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/apimachinery/pkg/apis/meta/v1"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/tools/clientcmd"
	_ "k8s.io/client-go/util/cert"
	_ "k8s.io/client-go/util/keyutil"
	_ "sigs.k8s.io/yaml"
)

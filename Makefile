# kubecpr — see README.md. Everything the tests need is built or installed by
# these targets, and cached outside the clone (KUBECPR_TESTBIN, Go's caches).

SHELL      := /bin/bash
GO         ?= go
BIN        := bin/kubecpr
VERSION    ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X main.version=$(VERSION)
CORE_PKGS  := ./recovery/... ./backup/... ./phases/...

.PHONY: all build test unit e2e lint testbin deps demo bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/kubecpr

# Real binaries for the integration tests: kubeadm, kube-apiserver,
# kube-controller-manager (v1.33.13) and etcd/etcdctl (v3.5.21), built from
# their Go modules into $$KUBECPR_TESTBIN (default ~/.cache/kubecpr/testbin).
testbin:
	@hack/testbin/build.sh >/dev/null

# containerd and runc from Debian for the container tests (root only).
deps:
	@hack/install-deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^hack/testbin/')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $(CORE_PKGS)

# Everything: lint, core packages under the race detector, then the CLI,
# harness and end-to-end tests against the real binaries.
test: lint deps testbin
	$(GO) test -race -count=1 $(CORE_PKGS)
	KUBECPR_TESTBIN_DIR=$$(hack/testbin/build.sh) $(GO) test -count=1 -timeout 30m ./cmd/... ./test/...

e2e: deps testbin
	KUBECPR_TESTBIN_DIR=$$(hack/testbin/build.sh) $(GO) test -count=1 -timeout 30m -v ./test/e2e/...

demo: build
	@hack/demo.sh

bench: build testbin
	KUBECPR_TESTBIN_DIR=$$(hack/testbin/build.sh) $(GO) test -run '^$$' -bench . -benchmem -count=1 ./cmd/kubecpr/ ./recovery/... ./backup/...
	KUBECPR_TESTBIN_DIR=$$(hack/testbin/build.sh) $(GO) test -run '^$$' -bench BenchmarkApprove -benchtime 1x -count=2 ./test/e2e/

clean:
	rm -rf bin

# The man page, from the command tree itself (urfave/cli's ToMan through the
# hidden `kubecpr man`): docs/kubecpr.1, replaced only when generation worked.
.PHONY: man
man:
	$(GO) run ./cmd/kubecpr man > docs/kubecpr.1.tmp && mv docs/kubecpr.1.tmp docs/kubecpr.1 || { rm -f docs/kubecpr.1.tmp; exit 1; }

package csr

import (
	"context"
	"sync"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
)

// DefaultWorkers is how many CSR writes the approver keeps in flight at
// once (Approver.Workers overrides it).
//
// Each CSR costs two writes, the approval and the certificate, and each
// write is a round trip to the API server and an etcd commit (an fsync).
// One after another, 1,000 CSRs took 9–11 s on loopback, most of it
// waiting. In flight together, etcd commits them in batches (2,003 WAL
// fsyncs for 1,000 CSRs one at a time, 300–450 with 64 in flight) and
// the API server's CPU becomes the limit: on 2 cores the time fell with
// every doubling up to 64 and not past it (docs/performance.md). 64 is
// still well under what an API server admits at once (the default
// --max-mutating-requests-inflight is 200), so an API server that other
// clients use is not crowded out.
const DefaultWorkers = 64

// Client-side rate limits of the stage's client (see TuneClient).
//
// client-go's defaults (5 requests/s, bursts of 10) are meant for
// controllers that run forever next to many others; at that rate the two
// writes per CSR of 1,000 node CSRs would take 400 s (and the 200/s of
// the recovery server's own client 8 s). The csr stage is the opposite:
// one short pass, through the node's own API server or kubecpr's
// recovery API server on 127.0.0.1, once. What protects the API server
// is the bound on requests in flight (DefaultWorkers), not the rate; the
// token bucket is only a ceiling against a runaway loop. So the burst
// takes one pass of 1,000 CSRs whole (2,000 writes, the list and retries
// on conflict fit in 2,500), and the rate after it, 1,000/s, is above what
// one API server on two cores sustains for these writes (measured
// 300–550/s on a busy machine, ~800/s by its CPU cost on idle cores):
// a larger pass is paced by the server, not throttled by kubecpr.
const (
	ClientQPS   = 1000
	ClientBurst = 2500
)

// TuneClient sets the client-side rate limits of the client the csr stage
// approves and signs with (ClientQPS, ClientBurst), and its wire format:
// protobuf, as kube-controller-manager and the kubelet speak to the API
// server (--kube-api-content-type), JSON only for what has no protobuf.
// kubecpr's client (recovery/kube), like client-go's generated clients
// (v0.33), already prefers protobuf for the built-in types when nothing
// is set; saying it here keeps it so whatever that default becomes. The
// stage only reads and writes built-in types (CSRs, Nodes, bootstrap
// token Secrets).
func TuneClient(cfg *rest.Config) *rest.Config {
	cfg.QPS, cfg.Burst = ClientQPS, ClientBurst
	cfg.RateLimiter = nil
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return cfg
}

// forEach calls f(i) for every i in [0, n) on at most workers goroutines,
// and returns when all calls returned. Once ctx is done no further call is
// started (the caller sees which ran by what f recorded).
func forEach(ctx context.Context, n, workers int, f func(i int)) {
	if workers <= 0 {
		workers = DefaultWorkers
	}
	if workers > n {
		workers = n
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	wg.Add(workers)
	for w := 0; w < workers; w++ {
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

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
// write is a round trip to the API server and an etcd commit. One after
// another, 1,000 CSRs took about 10 s on loopback, almost all of it spent
// waiting. With 32 in flight the API server's CPU is the limit instead
// (measured on 2 cores: no gain past 16–32, see docs/performance.md), and
// 32 stays far below the API server's own limits (the default
// --max-mutating-requests-inflight is 200 and the API Priority and
// Fairness shares are larger still), so an API server that other clients
// still use is not crowded out.
const DefaultWorkers = 32

// Client-side rate limits of the stage's client (see TuneClient).
//
// client-go's defaults (5 requests/s, bursts of 10) are meant for
// controllers that run forever next to many others; at that rate the two
// writes per CSR of 1,000 node CSRs would take 400 s. The csr stage is the
// opposite: one short pass, through the node's own API server or
// kubecpr's recovery API server on 127.0.0.1, with nothing to share it
// with. What protects the API server is the bound on requests in flight
// (DefaultWorkers), not the rate: the token bucket is only a ceiling for
// a runaway loop. So the burst covers one pass of 1,000 CSRs whole (2,000
// writes, the list and the retries on conflict fit in 2,500), and the rate
// after it, 1,000/s, is about what one API server on two cores sustains
// for these writes (measured ~600–1,100/s), so a larger pass is throttled
// to roughly what the server can do anyway, never to a crawl.
const (
	ClientQPS   = 1000
	ClientBurst = 2500
)

// TuneClient sets the rate limits and the wire format of the client the csr
// stage approves and signs with: the limits above, and protobuf, the API
// server's native encoding, which costs it less CPU than JSON per request.
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

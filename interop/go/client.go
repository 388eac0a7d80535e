// `go-peer client` and `go-peer load`: the seed's client.go (etcd naming
// resolver + custom_round_robin), with a choice of :authority and a closed
// loop load mode that reports like echo-client.

package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
)

// authorityFor maps --authority to the :authority header to send for the
// target endpoint prefix.
//
// grpc-go >= 1.57 (this peer's 1.85 included) sends the target's endpoint
// percent-encoded ("discovery%2Fdev%2Fgame"): "encoded" is that default,
// made explicit; "raw" ("discovery/dev/game") is what grpc-go < 1.57 sent.
// Any other value is sent as given.
func authorityFor(mode, endpoint string) string {
	switch mode {
	case "encoded":
		return url.PathEscape(endpoint)
	case "raw":
		return endpoint
	default:
		return mode
	}
}

func runClient(args []string, load bool) {
	name := "go-peer client"
	if load {
		name = "go-peer load"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var c common
	c.register(fs)
	id := fs.String("id", "", "stick every call to this instance id (ServiceID in the context)")
	authority := fs.String("authority", "encoded", "the :authority to send: encoded (grpc-go >= 1.57), raw (grpc-go < 1.57) or a value")
	message := fs.String("message", "hi", "the message to send")
	interval := fs.Duration("interval", time.Second, "client: pause between two calls")
	count := fs.Int("count", 0, "client: stop after this many calls (default: run until killed)")
	rpc := fs.String("rpc", "unary", "client: unary, server-stream, client-stream or bidi")
	concurrency := fs.Int("concurrency", 0, "load: calls in flight at all times")
	duration := fs.Duration("duration", 0, "load: how long to run")
	wait := fs.Duration("wait", 30*time.Second, "load: how long to wait for the first READY server")
	verbatim := fs.Bool("seed-verbatim", false, "use etcd's resolver as the seed does, without filling State.Addresses: with etcd client/v3 >= v3.6.0 grpc-go's base balancer then sees no address and every call fails (\"produced zero addresses\")")
	fs.StringVar(&stickyFrom, "sticky-from", "etcd", "where the picker reads a connection's instance id: etcd (the endpoint's Metadata, watched with endpoints.Manager) or metadata (resolver.Address.Metadata, as the seed does; empty from etcd client/v3 v3.6.8 on)")
	tlsCA := fs.String("tls-ca", "", "dial TLS, trusting this CA (PEM file); the :authority sent (see --authority) is also the SNI and the name checked in the server's certificate, so a rustls server needs a DNS name there (e.g. --authority localhost)")
	parse(fs, args)
	c.check()
	if *authority == "" {
		usage("--authority must not be empty")
	}
	if load && (*concurrency < 1 || *duration <= 0) {
		usage("load needs --concurrency >= 1 and --duration > 0")
	}
	if *count < 0 {
		usage("--count must be at least 1")
	}
	switch *rpc {
	case "unary", "server-stream", "client-stream", "bidi":
	default:
		usage("--rpc: expected unary, server-stream, client-stream or bidi, got %q", *rpc)
	}
	if stickyFrom != "etcd" && stickyFrom != "metadata" {
		usage("--sticky-from: expected etcd or metadata, got %q", stickyFrom)
	}

	cli, err := newEtcdClient(c.etcd.urls)
	if err != nil {
		fatal("etcd %v: %v", c.etcd.urls, err)
	}
	defer cli.Close()
	r, err := etcdresolver.NewBuilder(cli)
	if err != nil {
		fatal("etcd resolver: %v", err)
	}
	if *id != "" && stickyFrom == "etcd" {
		watchInstanceIDs(cli, c.prefix())
	}
	var builder resolver.Builder = r
	if !*verbatim {
		builder = withAddresses{r}
	}
	opts := []grpc.DialOption{
		grpc.WithResolvers(builder),
		grpc.WithDefaultServiceConfig(serviceConfig),
	}
	value := authorityFor(*authority, c.prefix())
	if *tlsCA != "" {
		// With TLS the :authority is the credentials' server name, and the
		// server's certificate is checked against that same name.
		creds, err := credentials.NewClientTLSFromFile(*tlsCA, value)
		if err != nil {
			fatal("--tls-ca %s: %v", *tlsCA, err)
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(value))
	}
	cc, err := grpc.NewClient("etcd:///"+c.prefix(), opts...)
	if err != nil {
		fatal("new client: %v", err)
	}
	defer cc.Close()

	ctx := context.Background()
	if *id != "" {
		ctx = withServiceID(ctx, *id)
	}
	if load {
		runLoad(ctx, cc, *message, *concurrency, *duration, *wait)
		return
	}
	for n := 0; *count == 0 || n < *count; n++ {
		if n > 0 {
			time.Sleep(*interval)
		}
		replies, err := call(ctx, cc, *rpc, *message)
		if err != nil {
			fatal("%s: %v", *rpc, err)
		}
		for _, r := range replies {
			fmt.Println(r)
		}
	}
}

// call makes one call of kind rpc and returns the replies' messages.
// Like the seed, a call waits for a READY server (wait-for-ready).
func call(ctx context.Context, cc *grpc.ClientConn, rpc, message string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch rpc {
	case "server-stream":
		return serverStreamingEcho(ctx, cc, message)
	case "client-stream":
		r, err := clientStreamingEcho(ctx, cc, []string{message + " 1", message + " 2", message})
		return []string{r}, err
	case "bidi":
		return bidiEcho(ctx, cc, []string{message + " 1", message + " 2", message})
	default:
		r, err := unaryEcho(ctx, cc, message)
		return []string{r}, err
	}
}

type workerReport struct {
	ok, errs    int64
	latencies   []int64
	perInstance map[string]int64
}

// runLoad is echo-client's load mode: `concurrency` workers in a closed
// loop of UnaryEcho until `duration` has passed; then the two report lines.
func runLoad(ctx context.Context, cc *grpc.ClientConn, message string, concurrency int, duration, wait time.Duration) {
	// Leave discovery and connecting out of the measurement: one call that
	// waits for a READY server, not counted.
	wctx, cancel := context.WithTimeout(ctx, wait)
	_, err := unaryEcho(wctx, cc, message)
	cancel()
	if err != nil {
		fatal("no server answered within %v: %v", wait, err)
	}
	start := time.Now()
	deadline := start.Add(duration)
	reports := make([]workerReport, concurrency)
	var logged int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func(rep *workerReport) {
			defer wg.Done()
			rep.perInstance = map[string]int64{}
			for time.Now().Before(deadline) {
				sent := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				reply, err := unaryEcho(cctx, cc, message)
				cancel()
				if err != nil {
					rep.errs++
					mu.Lock()
					if logged < 20 {
						logf("call failed: %v", err)
					}
					logged++
					mu.Unlock()
					continue
				}
				rep.ok++
				rep.latencies = append(rep.latencies, time.Since(sent).Microseconds())
				rep.perInstance[instanceOf(reply)]++
			}
		}(&reports[w])
	}
	wg.Wait()
	elapsed := time.Since(start)

	var total workerReport
	total.perInstance = map[string]int64{}
	for _, r := range reports {
		total.ok += r.ok
		total.errs += r.errs
		total.latencies = append(total.latencies, r.latencies...)
		for id, n := range r.perInstance {
			total.perInstance[id] += n
		}
	}
	sort.Slice(total.latencies, func(i, j int) bool { return total.latencies[i] < total.latencies[j] })
	rps := int64(0)
	if elapsed > 0 {
		rps = int64(float64(total.ok)/elapsed.Seconds() + 0.5)
	}
	fmt.Println(perInstanceLine(total.perInstance))
	fmt.Printf("rps=%d ok=%d errs=%d p50_us=%d p99_us=%d\n", rps, total.ok, total.errs,
		quantile(total.latencies, 0.5), quantile(total.latencies, 0.99))
}

// quantile of sorted values: the smallest value with at least q of them at
// or below it.
func quantile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// instanceOf is the id in a reply "hi (from 1)", "?" when there is none.
func instanceOf(reply string) string {
	i := strings.LastIndex(reply, "(from ")
	if i < 0 || !strings.HasSuffix(reply, ")") {
		return "?"
	}
	return reply[i+len("(from ") : len(reply)-1]
}

// perInstanceLine is "per_instance 1=<n> 2=<n>", numeric ids in numeric
// order first, like echo-client.
func perInstanceLine(counts map[string]int64) string {
	ids := make([]string, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		var a, b int64
		_, ea := fmt.Sscanf(ids[i], "%d", &a)
		_, eb := fmt.Sscanf(ids[j], "%d", &b)
		na := ea == nil && fmt.Sprint(a) == ids[i]
		nb := eb == nil && fmt.Sprint(b) == ids[j]
		switch {
		case na && nb:
			return a < b
		case na != nb:
			return na
		default:
			return ids[i] < ids[j]
		}
	})
	var b strings.Builder
	b.WriteString("per_instance")
	for _, id := range ids {
		fmt.Fprintf(&b, " %s=%d", id, counts[id])
	}
	return b.String()
}

// runList prints what etcd's endpoints.Manager decodes under the prefix,
// one `<key> addr=<addr> metadata=<metadata>` line per endpoint, sorted.
func runList(args []string) {
	fs := flag.NewFlagSet("go-peer list", flag.ContinueOnError)
	var c common
	c.register(fs)
	parse(fs, args)
	c.check()
	cli, err := newEtcdClient(c.etcd.urls)
	if err != nil {
		fatal("etcd %v: %v", c.etcd.urls, err)
	}
	defer cli.Close()
	em, err := endpoints.NewManager(cli, c.prefix())
	if err != nil {
		fatal("endpoints manager: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eps, err := em.List(ctx)
	if err != nil {
		fatal("list %s: %v", c.prefix(), err)
	}
	keys := make([]string, 0, len(eps))
	for k := range eps {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%s addr=%s metadata=%v\n", k, eps[k].Addr, eps[k].Metadata)
	}
}

// watchInstanceIDs keeps instanceIDs current from endpoints.Manager's watch
// of prefix: what a Go client must read for stickiness now that etcd's
// resolver no longer hands the Metadata over. It returns once the first
// listing is in, so the first call already knows every instance.
func watchInstanceIDs(cli *clientv3.Client, prefix string) {
	em, err := endpoints.NewManager(cli, prefix)
	if err != nil {
		fatal("endpoints manager: %v", err)
	}
	ch, err := em.NewWatchChannel(context.Background())
	if err != nil {
		fatal("watch %s: %v", prefix, err)
	}
	apply := func(ups []*endpoints.Update) {
		for _, up := range ups {
			switch up.Op {
			case endpoints.Add:
				instanceIDs.Store(up.Endpoint.Addr, fmt.Sprint(up.Endpoint.Metadata))
			case endpoints.Delete:
				// The key is <prefix>/<addr>.
				instanceIDs.Delete(strings.TrimPrefix(up.Key, prefix+"/"))
			}
		}
	}
	apply(<-ch)
	go func() {
		for ups := range ch {
			apply(ups)
		}
	}()
}

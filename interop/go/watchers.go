// `go-peer watchers`: the Go side of the bench's watchers section, with
// loadgen's protocol: N watch channels of endpoints.Manager on one etcd
// client (what etcd's naming resolver runs per grpc.ClientConn; clientv3
// carries them on one gRPC watch stream), while a writer puts a new
// endpoint at a fixed rate whose Metadata is its send time (unix µs) and
// deletes the oldest past `live`. Prints one JSON line like loadgen's.
//
// With --rate 0 it only watches (one of several processes watching a prefix
// another one churns): it says "churning" once its watches are up and ends
// --duration + 2 s after the first put it sees. --raw adds what a harness
// needs to merge processes: "latencies" ([µs, count] pairs, µs rounded to 3
// significant digits) and "seen" ([sent µs, watchers that saw it, last
// arrival µs] per put).

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
)

func unixMicros() int64 { return time.Now().UnixNano() / 1e3 }

// rssMiB is this process's resident set size, from /proc/self/statm.
func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseFloat(f[1], 64)
	return float64(int(pages*float64(os.Getpagesize())/(1<<20)*10+0.5)) / 10
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func percentile(sorted []int64, q float64) float64 {
	v := quantile(sorted, q)
	return float64(int(float64(v)/100+0.5)) / 10 // µs → ms, one decimal
}

// managerOf connects to c's etcd and makes an endpoints.Manager of prefix
// p, exiting with the error when it cannot.
func managerOf(c common, p string) (*clientv3.Client, endpoints.Manager) {
	cli, err := newEtcdClient(c.etcd.urls)
	if err != nil {
		fatal("etcd %v: %v", c.etcd.urls, err)
	}
	em, err := endpoints.NewManager(cli, p)
	if err != nil {
		fatal("endpoints manager: %v", err)
	}
	return cli, em
}

func runWatchers(args []string) {
	fs := flag.NewFlagSet("go-peer watchers", flag.ContinueOnError)
	var c common
	c.register(fs)
	prefix := fs.String("prefix", "", "the prefix watched and churned (default discovery/ENV/SERVICE)")
	watchers := fs.Int("watchers", 1000, "watch channels on the one client")
	rate := fs.Int("rate", 50, "puts per second (0: only watch)")
	live := fs.Int("live", 100, "keys kept under the prefix")
	duration := fs.Duration("duration", 20*time.Second, "how long the churn runs")
	raw := fs.Bool("raw", false, "add latencies and per-put arrivals to the result")
	parse(fs, args)
	c.check()
	if *watchers < 1 || *rate < 0 || *live < 1 || *duration <= 0 {
		usage("--watchers, --live and --duration must be positive, --rate not negative")
	}
	p := c.prefixOr(*prefix)
	rssBefore := rssMiB()
	cli, em := managerOf(c, p)
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type seenPut struct {
		count int
		last  int64
	}
	var mu sync.Mutex
	firstSeen := make(chan struct{})
	var firstOnce sync.Once
	seen := map[int64]*seenPut{}
	var perWatcher []int64
	started := time.Now()
	// NewWatchChannel returns once it listed the prefix and started
	// watching (the listing comes as a first message only when the prefix
	// has keys; a fresh prefix has none).
	begun := unixMicros()
	for w := 0; w < *watchers; w++ {
		ch, err := em.NewWatchChannel(ctx)
		if err != nil {
			fatal("watch %s: %v", p, err)
		}
		go func() {
			for ups := range ch {
				now := unixMicros()
				for _, up := range ups {
					if up.Op != endpoints.Add {
						continue
					}
					sent, err := strconv.ParseInt(fmt.Sprint(up.Endpoint.Metadata), 10, 64)
					if err != nil || sent < begun {
						continue
					}
					firstOnce.Do(func() { close(firstSeen) })
					mu.Lock()
					perWatcher = append(perWatcher, max(now-sent, 1))
					s := seen[sent]
					if s == nil {
						s = &seenPut{}
						seen[sent] = s
					}
					s.count++
					s.last = max(s.last, now)
					mu.Unlock()
				}
			}
		}()
	}
	readyMs := time.Since(started).Seconds() * 1e3
	rssWatching := rssMiB()
	fmt.Println(`{"event":"churning"}`)
	cpuBefore := cpuSeconds()

	var puts, putErrors int64
	var churnS float64
	churnStarted := time.Now()
	if *rate > 0 {
		puts, putErrors = churn(ctx, cli, p, *rate, *live, *duration)
		churnS = time.Since(churnStarted).Seconds()
		time.Sleep(2 * time.Second) // let the last events arrive
	} else {
		select {
		case <-firstSeen:
			churnStarted = time.Now()
			time.Sleep(*duration + 2*time.Second)
		case <-time.After(*duration + time.Minute):
		}
	}
	cpuS := cpuSeconds() - cpuBefore
	measuredS := time.Since(churnStarted).Seconds()
	rssAfter := rssMiB()
	if *rate > 0 {
		_, _ = cli.Delete(context.Background(), p+"/", clientv3WithPrefix())
	}

	mu.Lock()
	per := append([]int64(nil), perWatcher...)
	var all []int64
	var seenRaw [][3]int64
	incomplete := 0
	for sent, s := range seen {
		if s.count < *watchers {
			incomplete++
		}
		all = append(all, max(s.last-sent, 1))
		seenRaw = append(seenRaw, [3]int64{sent, int64(s.count), s.last})
	}
	mu.Unlock()
	sort.Slice(per, func(i, j int) bool { return per[i] < per[j] })
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	maxOf := func(v []int64) float64 {
		if len(v) == 0 {
			return 0
		}
		return float64(int(float64(v[len(v)-1])/100+0.5)) / 10
	}
	result := map[string]any{
		"event":                   "watchers",
		"stack":                   "go",
		"watchers":                *watchers,
		"rate_per_s":              *rate,
		"live_keys":               *live,
		"churn_s":                 float64(int(churnS*10+0.5)) / 10,
		"puts":                    puts,
		"put_errors":              putErrors,
		"deliveries":              len(per),
		"puts_not_seen_by_all":    int64(incomplete) + (puts - int64(len(seen))),
		"per_watcher_p50_ms":      percentile(per, 0.5),
		"per_watcher_p99_ms":      percentile(per, 0.99),
		"per_watcher_max_ms":      maxOf(per),
		"all_watchers_p50_ms":     percentile(all, 0.5),
		"all_watchers_p99_ms":     percentile(all, 0.99),
		"all_watchers_max_ms":     maxOf(all),
		"watch_ready_ms":          float64(int(readyMs*10+0.5)) / 10,
		"client_rss_before_mib":   rssBefore,
		"client_rss_watching_mib": rssWatching,
		"client_rss_after_mib":    rssAfter,
		"client_cpu_pct":          float64(int(cpuS/measuredS*1000+0.5)) / 10,
	}
	if *raw {
		result["latencies"] = histogram(per)
		result["seen"] = seenRaw
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

// churn puts a new endpoint rate times a second for duration, each in its
// own goroutine so that a slow answer does not lower the rate, its
// Metadata its send time in unix µs, and deletes the oldest key past live;
// it returns the puts that succeeded and failed.
func churn(ctx context.Context, cli *clientv3.Client, p string, rate, live int, duration time.Duration) (int64, int64) {
	var keys []string
	var puts, putErrors int64
	var wg sync.WaitGroup
	var counts sync.Mutex
	tick := time.NewTicker(time.Second / time.Duration(rate))
	churnStarted := time.Now()
	for n := 1; time.Since(churnStarted) < duration; n++ {
		<-tick.C
		addr := fmt.Sprintf("10.%d.%d.%d:50051", n>>16&255, n>>8&255, n&255)
		key := p + "/" + addr
		var old string
		if len(keys) >= live {
			old, keys = keys[0], keys[1:]
		}
		keys = append(keys, key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := unixMicros()
			value := fmt.Sprintf(`{"Op":0,"Addr":%q,"Metadata":"%d"}`, addr, sent)
			_, err := cli.Put(ctx, key, value)
			counts.Lock()
			if err != nil {
				putErrors++
			} else {
				puts++
			}
			counts.Unlock()
			if old != "" {
				_, _ = cli.Delete(ctx, old)
			}
		}()
	}
	tick.Stop()
	wg.Wait()
	return puts, putErrors
}

// histogram is sorted latencies as [µs, count] pairs, each µs rounded to
// 3 significant digits (as loadgen's HdrHistogram keeps them).
func histogram(sorted []int64) [][2]int64 {
	var out [][2]int64
	for _, v := range sorted {
		scale := int64(1)
		for v/scale >= 1000 {
			scale *= 10
		}
		r := (v + scale/2) / scale * scale
		if n := len(out); n > 0 && out[n-1][0] == r {
			out[n-1][1]++
		} else {
			out = append(out, [2]int64{r, 1})
		}
	}
	return out
}

// runListing is `go-peer listing`: how long a fresh watch channel of
// endpoints.Manager (what etcd's naming resolver opens per ClientConn)
// takes to hand over a prefix of --endpoints keys: the first from a cold
// start (the client made first, as loadgen's `resolve` does), then
// --repeat - 1 more fresh channels on the same client; and the process's
// RSS while it holds the first set.
func runListing(args []string) {
	fs := flag.NewFlagSet("go-peer listing", flag.ContinueOnError)
	var c common
	c.register(fs)
	prefix := fs.String("prefix", "", "the prefix listed (default discovery/ENV/SERVICE)")
	want := fs.Int("endpoints", 10000, "keys the prefix holds")
	repeat := fs.Int("repeat", 5, "fresh watch channels, one after the other")
	parse(fs, args)
	c.check()
	if *want < 1 || *repeat < 1 {
		usage("--endpoints and --repeat must be positive")
	}
	p := c.prefixOr(*prefix)
	rssBefore := rssMiB()
	coldStart := time.Now()
	cli, em := managerOf(c, p)
	defer cli.Close()
	var took []int64
	rssListed := rssBefore
	for i := 0; i < *repeat; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		started := time.Now()
		if i == 0 {
			started = coldStart
		}
		ch, err := em.NewWatchChannel(ctx)
		if err != nil {
			fatal("watch %s: %v", p, err)
		}
		set := map[string]endpoints.Endpoint{}
		for len(set) < *want {
			ups, ok := <-ch
			if !ok {
				fatal("the watch of %s ended with %d of %d endpoints", p, len(set), *want)
			}
			for _, up := range ups {
				if up.Op == endpoints.Add {
					set[up.Key] = up.Endpoint
				}
			}
		}
		took = append(took, time.Since(started).Microseconds())
		if i == 0 {
			rssListed = rssMiB()
			runtime.KeepAlive(set) // held while measured
		}
		cancel()
	}
	ms := func(us int64) float64 { return float64(int(float64(us)/100+0.5)) / 10 }
	warm := append([]int64(nil), took[1:]...)
	sort.Slice(warm, func(i, j int) bool { return warm[i] < warm[j] })
	var warmMedian any
	if len(warm) > 0 {
		warmMedian = ms(warm[len(warm)/2])
	}
	out, _ := json.Marshal(map[string]any{
		"event":                 "listing",
		"stack":                 "go",
		"endpoints":             *want,
		"repeat":                *repeat,
		"cold_ms":               ms(took[0]),
		"warm_median_ms":        warmMedian,
		"client_rss_before_mib": rssBefore,
		"client_rss_listed_mib": rssListed,
	})
	fmt.Println(string(out))
}

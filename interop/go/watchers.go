// `go-peer watchers`: the Go side of the bench's watchers section, with
// loadgen's protocol: N watch channels of endpoints.Manager on one etcd
// client (what etcd's naming resolver runs per grpc.ClientConn; clientv3
// carries them on one gRPC watch stream), while a writer puts a new
// endpoint at a fixed rate whose Metadata is its send time (unix µs) and
// deletes the oldest past `live`. Prints one JSON line like loadgen's.

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

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

func runWatchers(args []string) {
	fs := flag.NewFlagSet("go-peer watchers", flag.ContinueOnError)
	var c common
	c.register(fs)
	prefix := fs.String("prefix", "", "the prefix watched and churned (default discovery/ENV/SERVICE)")
	watchers := fs.Int("watchers", 1000, "watch channels on the one client")
	rate := fs.Int("rate", 50, "puts per second")
	live := fs.Int("live", 100, "keys kept under the prefix")
	duration := fs.Duration("duration", 20*time.Second, "how long the churn runs")
	parse(fs, args)
	c.check()
	if *watchers < 1 || *rate < 1 || *live < 1 || *duration <= 0 {
		usage("--watchers, --rate, --live and --duration must be positive")
	}
	p := strings.TrimSuffix(*prefix, "/")
	if p == "" {
		p = c.prefix()
	}
	rssBefore := rssMiB()
	cli, err := newEtcdClient(c.etcd.urls)
	if err != nil {
		fatal("etcd %v: %v", c.etcd.urls, err)
	}
	defer cli.Close()
	em, err := endpoints.NewManager(cli, p)
	if err != nil {
		fatal("endpoints manager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type seenPut struct {
		count int
		last  int64
	}
	var mu sync.Mutex
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

	var keys []string
	var puts, putErrors int64
	var wg sync.WaitGroup
	var counts sync.Mutex
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	churnStarted := time.Now()
	for n := 1; time.Since(churnStarted) < *duration; n++ {
		<-tick.C
		addr := fmt.Sprintf("10.%d.%d.%d:50051", n>>16&255, n>>8&255, n&255)
		key := p + "/" + addr
		var old string
		if len(keys) >= *live {
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
	churnS := time.Since(churnStarted).Seconds()
	time.Sleep(2 * time.Second) // let the last events arrive
	cpuS := cpuSeconds() - cpuBefore
	measuredS := time.Since(churnStarted).Seconds()
	rssAfter := rssMiB()
	_, _ = cli.Delete(context.Background(), p+"/", clientv3WithPrefix())

	mu.Lock()
	per := append([]int64(nil), perWatcher...)
	var all []int64
	incomplete := 0
	for sent, s := range seen {
		if s.count < *watchers {
			incomplete++
		}
		all = append(all, max(s.last-sent, 1))
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
	out, _ := json.Marshal(map[string]any{
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
	})
	fmt.Println(string(out))
}

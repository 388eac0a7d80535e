// go-peer: a seed-style grpc-go server and client, written for the interop
// tests of this project (see README.md next to this file).
//
//	go-peer server --id 1 [--env dev] [--service game] [--etcd URL]... [--addr 127.0.0.1:0] [--ttl 60s] [--drain 0s]
//	go-peer client [--id ID] [--authority encoded|raw|VALUE] [--rpc unary|server-stream|client-stream|bidi] [--count N] [--interval 1s] [...]
//	go-peer load   --concurrency C --duration D [--id ID] [--authority ...] [...]
//	go-peer list   [--env dev] [--service game] [--etcd URL]...
//	go-peer watchers [--prefix P] [--watchers 1000] [--rate 50 (0: only watch)] [--live 100] [--duration 20s] [--raw] [--etcd URL]...
//	go-peer listing  [--prefix P] [--endpoints 10000] [--repeat 5] [--etcd URL]...
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const defaultEtcd = "http://127.0.0.1:2379"

// usage prints one line and exits with code 2, like the Rust CLIs.
func usage(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(2)
}

// fatal prints one line and exits with code 1 (a failed call or setup).
func fatal(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(1)
}

// logf writes a log line on stderr (stdout carries only replies and
// reports).
func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "%s go-peer: %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// etcdList is --etcd: repeatable, each value may be a comma list; the
// default comes from ETCD_ENDPOINTS, like the Rust CLIs.
type etcdList struct {
	urls []string
	set  bool
}

func (l *etcdList) String() string { return strings.Join(l.urls, ",") }

func (l *etcdList) Set(v string) error {
	if !l.set {
		l.urls, l.set = nil, true
	}
	for _, u := range strings.Split(v, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return fmt.Errorf("%q is not an http:// or https:// URL", u)
		}
		l.urls = append(l.urls, u)
	}
	if len(l.urls) == 0 {
		return fmt.Errorf("no etcd URL given")
	}
	return nil
}

func defaultEtcdList() *etcdList {
	l := &etcdList{}
	if env := os.Getenv("ETCD_ENDPOINTS"); env != "" {
		if err := l.Set(env); err != nil {
			usage("ETCD_ENDPOINTS: %v", err)
		}
	} else {
		l.urls = []string{defaultEtcd}
	}
	l.set = false
	return l
}

// common are the flags every mode has.
type common struct {
	env     string
	service string
	etcd    *etcdList
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.env, "env", "dev", "environment: the key prefix is discovery/ENV/SERVICE")
	fs.StringVar(&c.service, "service", "game", "service name: the key prefix is discovery/ENV/SERVICE")
	c.etcd = defaultEtcdList()
	fs.Var(c.etcd, "etcd", "etcd client URL; repeat or comma list (default $ETCD_ENDPOINTS or "+defaultEtcd+")")
}

// prefix is the etcd key prefix, the resolver target's endpoint.
func (c *common) prefix() string {
	return "discovery/" + c.env + "/" + c.service
}

// prefixOr is flag without a trailing '/', or discovery/ENV/SERVICE when
// it is empty.
func (c *common) prefixOr(flag string) string {
	if p := strings.TrimSuffix(flag, "/"); p != "" {
		return p
	}
	return c.prefix()
}

func (c *common) check() {
	for _, s := range []string{c.env, c.service} {
		if s == "" || strings.Contains(s, "/") {
			usage("--env and --service must be non-empty and contain no '/': got %q", s)
		}
	}
}

func parse(fs *flag.FlagSet, args []string) {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		usage("unexpected argument %q", fs.Arg(0))
	}
}

func main() {
	if len(os.Args) < 2 {
		usage("missing mode: go-peer server|client|load|list|watchers|listing [flags] (see interop/go/README.md)")
	}
	mode, args := os.Args[1], os.Args[2:]
	switch mode {
	case "server":
		runServer(args)
	case "client":
		runClient(args, false)
	case "load":
		runClient(args, true)
	case "list":
		runList(args)
	case "watchers":
		runWatchers(args)
	case "listing":
		runListing(args)
	default:
		usage("unknown mode %q: expected server, client, load, list, watchers or listing", mode)
	}
}

// newEtcdClient connects to etcd as the seed does (clientv3.NewFromURL)
// when given one URL, and with clientv3.New for a cluster's members.
func newEtcdClient(urls []string) (*clientv3.Client, error) {
	if len(urls) == 1 {
		return clientv3.NewFromURL(urls[0])
	}
	return clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second})
}

// clientv3WithPrefix is clientv3.WithPrefix, for the callers that import no
// clientv3 themselves.
func clientv3WithPrefix() clientv3.OpOption { return clientv3.WithPrefix() }

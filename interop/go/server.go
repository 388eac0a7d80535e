// `go-peer server`: the seed's server.go, grown the flags of echo-server.

package main

import (
	"context"
	"flag"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func runServer(args []string) {
	fs := flag.NewFlagSet("go-peer server", flag.ContinueOnError)
	var c common
	c.register(fs)
	id := fs.String("id", "", "instance id, registered as the endpoint's Metadata (required)")
	addr := fs.String("addr", "127.0.0.1:0", "listen address; the bound one is registered")
	ttl := fs.Duration("ttl", 60*time.Second, "lease TTL, kept alive while running")
	drain := fs.Duration("drain", 0, "pause between deregistering and stopping (the seed has none)")
	delay := fs.Duration("delay", 0, "added before every UnaryEcho reply (a call's x-delay metadata overrides it)")
	parse(fs, args)
	c.check()
	if *id == "" {
		usage("--id is required")
	}
	if *delay < 0 {
		usage("--delay must not be negative: got %v", *delay)
	}
	if *ttl < time.Second {
		usage("--ttl must be at least 1s: got %v", *ttl)
	}

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fatal("cannot listen on %s: %v", *addr, err)
	}
	bound := lis.Addr().String()
	logf("id=%s listening on %s", *id, bound)

	s := grpc.NewServer()
	s.RegisterService(&echoServiceDesc, &echoServer{id: *id, delay: *delay})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	go func() {
		if err := s.Serve(lis); err != nil {
			logf("serve: %v", err)
		}
	}()

	cli, err := newEtcdClient(c.etcd.urls)
	if err != nil {
		fatal("etcd %v: %v", c.etcd.urls, err)
	}
	defer cli.Close()

	// Registration as the seed does it: a lease, kept alive, and the
	// endpoint written through etcd's endpoints.Manager (so the value is
	// exactly Go's).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	lease, err := cli.Grant(ctx, int64(ttl.Seconds()))
	if err != nil {
		fatal("lease grant: %v", err)
	}
	em, err := endpoints.NewManager(cli, c.prefix())
	if err != nil {
		fatal("endpoints manager: %v", err)
	}
	key := c.prefix() + "/" + bound
	if err := em.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: bound, Metadata: *id}, clientv3.WithLease(lease.ID)); err != nil {
		fatal("register %s: %v", key, err)
	}
	cancel()
	alive, err := cli.KeepAlive(context.Background(), lease.ID)
	if err != nil {
		fatal("keepalive: %v", err)
	}
	go func() {
		for range alive {
		}
		logf("keepalive of lease %x ended", lease.ID)
	}()
	logf("id=%s registered %s", *id, key)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	sig := <-sigs
	logf("%v: shutting down", sig)

	hs.Shutdown()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	if err := em.DeleteEndpoint(ctx, key); err != nil {
		logf("cannot deregister %s: %v", key, err)
	} else {
		logf("deregistered %s", key)
	}
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		logf("cannot revoke lease %x: %v", lease.ID, err)
	}
	cancel()
	time.Sleep(*drain)
	s.GracefulStop()
	logf("stopped")
}

// What a seed-style client needs on current grpc-go and etcd: etcd's naming
// resolver (client/v3 >= v3.6.0) reports its endpoints only as
// resolver.State.Endpoints, and grpc-go's balancer/base (which the seed's
// custom_round_robin is built on) reads only resolver.State.Addresses, so
// it sees zero addresses and every call fails with "produced zero
// addresses". withAddresses wraps the resolver so that each update carries
// both.

package main

import (
	"google.golang.org/grpc/resolver"
)

// withAddresses is a resolver.Builder that builds inner's resolver and fills
// State.Addresses from State.Endpoints on every update.
type withAddresses struct{ inner resolver.Builder }

func (w withAddresses) Scheme() string { return w.inner.Scheme() }

func (w withAddresses) Build(t resolver.Target, cc resolver.ClientConn, o resolver.BuildOptions) (resolver.Resolver, error) {
	return w.inner.Build(t, addressesConn{cc}, o)
}

// addressesConn passes everything through, adding the endpoints' addresses
// to a state that has none.
type addressesConn struct{ resolver.ClientConn }

func (c addressesConn) UpdateState(s resolver.State) error {
	if len(s.Addresses) == 0 {
		for _, e := range s.Endpoints {
			s.Addresses = append(s.Addresses, e.Addresses...)
		}
	}
	return c.ClientConn.UpdateState(s)
}

// The seed's `custom_round_robin` balancer: grpc-go's base balancer manages
// the connections; this picker only picks among the READY ones.

package main

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
)

// stickyFrom says where the picker learns each connection's instance id:
//
//   - "metadata": resolver.Address.Metadata, as the seed's picker reads it.
//     etcd's naming resolver filled it up to client/v3 v3.6.7; from v3.6.8
//     on it hands over the address only, so a picker reading it never finds
//     the instance and every call goes round robin, silently.
//   - "etcd" (the default): the Metadata of the etcd endpoint whose Addr is
//     the connection's address, from endpoints.Manager's watch of the same
//     prefix (instanceIDs). Works with every etcd client version.
var stickyFrom = "etcd"

// instanceIDs maps an endpoint address to its Metadata as text, kept
// current by watchInstanceIDs.
var instanceIDs sync.Map

// balancerName is the name the service config refers to.
const balancerName = "custom_round_robin"

// serviceConfig selects the picker, as the seed's client does.
const serviceConfig = `{"loadBalancingConfig":[{"` + balancerName + `":{}}]}`

// serviceIDKey is the context key of the instance id a call sticks to.
type serviceIDKey struct{}

// withServiceID returns a context whose calls go to instance id when it is
// READY (round robin otherwise, like the seed).
func withServiceID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, serviceIDKey{}, id)
}

func init() {
	balancer.Register(base.NewBalancerBuilder(balancerName, pickerBuilder{}, base.Config{HealthCheck: false}))
}

type pickerBuilder struct{}

type readyConn struct {
	sc   balancer.SubConn
	addr string
	// The endpoint's Metadata as etcd's resolver hands it over
	// (resolver.Address.Metadata, a string after the JSON round trip; nil
	// from etcd client/v3 v3.6.8 on).
	metadata interface{}
}

// instanceID is the connection's instance id as stickyFrom says to read it.
func (c readyConn) instanceID() (string, bool) {
	if stickyFrom == "metadata" {
		if c.metadata == nil {
			return "", false
		}
		return fmt.Sprint(c.metadata), true
	}
	id, ok := instanceIDs.Load(c.addr)
	if !ok {
		return "", false
	}
	return id.(string), true
}

func (pickerBuilder) Build(info base.PickerBuildInfo) balancer.Picker {
	if len(info.ReadySCs) == 0 {
		return base.NewErrPicker(balancer.ErrNoSubConnAvailable)
	}
	conns := make([]readyConn, 0, len(info.ReadySCs))
	for sc, sci := range info.ReadySCs {
		//lint:ignore SA1019 the seed reads the deprecated field; so does --sticky-from metadata
		conns = append(conns, readyConn{sc: sc, addr: sci.Address.Addr, metadata: sci.Address.Metadata})
	}
	p := &picker{conns: conns}
	// A random start, so that many clients do not all begin on the same
	// server.
	p.next = uint32(rand.Intn(len(conns)))
	return p
}

type picker struct {
	conns []readyConn
	next  uint32
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	if id, ok := info.Ctx.Value(serviceIDKey{}).(string); ok && id != "" {
		for _, c := range p.conns {
			if got, ok := c.instanceID(); ok && got == id {
				return balancer.PickResult{SubConn: c.sc}, nil
			}
		}
	}
	n := atomic.AddUint32(&p.next, 1)
	return balancer.PickResult{SubConn: p.conns[int(n)%len(p.conns)].sc}, nil
}

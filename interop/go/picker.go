// The seed's `custom_round_robin` balancer: grpc-go's base balancer manages
// the connections; this picker only picks among the READY ones.

package main

import (
	"context"
	"fmt"
	"math/rand"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
)

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
	sc balancer.SubConn
	// The endpoint's Metadata as etcd's resolver hands it over
	// (resolver.Address.Metadata, a string after the JSON round trip).
	metadata interface{}
}

func (pickerBuilder) Build(info base.PickerBuildInfo) balancer.Picker {
	if len(info.ReadySCs) == 0 {
		return base.NewErrPicker(balancer.ErrNoSubConnAvailable)
	}
	conns := make([]readyConn, 0, len(info.ReadySCs))
	for sc, sci := range info.ReadySCs {
		conns = append(conns, readyConn{sc: sc, metadata: sci.Address.Metadata})
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
			if c.metadata != nil && fmt.Sprint(c.metadata) == id {
				return balancer.PickResult{SubConn: c.sc}, nil
			}
		}
	}
	n := atomic.AddUint32(&p.next, 1)
	return balancer.PickResult{SubConn: p.conns[int(n)%len(p.conns)].sc}, nil
}

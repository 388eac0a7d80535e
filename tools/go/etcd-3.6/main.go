// etcd built from the Go module proxy: the same main as etcd's own binary
// (etcdmain.Main runs the server, or `etcd grpc-proxy ...`). Built by
// etcd-provision into target/etcd/<version>/etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

//go:build tools

// Pins grpc-health-probe, built by go-provision with
// `go build github.com/grpc-ecosystem/grpc-health-probe` in this module.
package tools

import _ "github.com/grpc-ecosystem/grpc-health-probe"

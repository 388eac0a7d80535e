//! Generated code for the echo service of `proto/echo.proto`.
//!
//! The proto is wire-identical to grpc-go's `examples/features/proto/echo`
//! (package `grpc.examples.echo`), so a Go client of that proto can call our
//! server and our client can call a Go server. This crate only holds generated
//! code and the descriptor set; it must not depend on etcd or on the balancer.
//!
//! ```
//! use echo_proto::{EchoRequest, echo_client::EchoClient};
//!
//! # async fn call(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
//! let mut client = EchoClient::new(channel);
//! let reply = client.unary_echo(EchoRequest { message: "hi".into() }).await?;
//! println!("{}", reply.into_inner().message);
//! # Ok(())
//! # }
//! ```

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("grpc.examples.echo");

/// Encoded `FileDescriptorSet` of `proto/echo.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

/// Fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "grpc.examples.echo.Echo";

/// Full method path of `UnaryEcho`, as it appears in the HTTP/2 `:path`.
pub const UNARY_ECHO_PATH: &str = "/grpc.examples.echo.Echo/UnaryEcho";

//! The generated code speaks exactly grpc-go's echo wire format.

use echo_proto::{EchoRequest, EchoResponse, SERVICE_NAME, UNARY_ECHO_PATH};
use prost::Message as _;

#[test]
fn method_paths_match_grpc_go() {
    assert_eq!(SERVICE_NAME, "grpc.examples.echo.Echo");
    assert_eq!(UNARY_ECHO_PATH, "/grpc.examples.echo.Echo/UnaryEcho");
    let generated = include_str!(concat!(env!("OUT_DIR"), "/grpc.examples.echo.rs"));
    for method in [
        "UnaryEcho",
        "ServerStreamingEcho",
        "ClientStreamingEcho",
        "BidirectionalStreamingEcho",
    ] {
        let path = format!("\"/grpc.examples.echo.Echo/{method}\"");
        assert!(generated.contains(&path), "generated code lacks {path}");
    }
}

#[test]
fn messages_encode_as_field_one_string() {
    // field 1, wire type 2 (length-delimited) = 0x0a, length 2, "hi".
    let req = EchoRequest {
        message: "hi".into(),
    };
    assert_eq!(req.encode_to_vec(), [0x0a, 0x02, b'h', b'i']);
    let resp = EchoResponse::decode(&[0x0a, 0x02, b'h', b'i'][..]).expect("decode");
    assert_eq!(resp.message, "hi");
    assert!(EchoRequest::default().encode_to_vec().is_empty());
}

// Generates the tonic client and server of proto/inventory.proto (needs a
// protoc, as etcd-client does: PROTOC, or protoc on PATH).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::compile_protos("proto/inventory.proto")?;
    Ok(())
}

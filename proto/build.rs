//! Compiles the .proto files with `protox` (pure Rust), so building needs
//! no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/confide/v1/confide.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // prost's codec with small stream buffers (src/codec.rs).
        .codec_path("crate::codec::ConfideCodec")
        // Shared, not copied: decoding slices the received buffer, and a
        // site's kept upload is re-sent without a copy per attempt.
        .bytes(".confide.v1.MaskedInputChunk.data")
        // A site's model download decodes without copying each chunk.
        .bytes(".confide.v1.ModelChunk.data")
        // Parts of a large task are slices of its one shared encoding.
        .bytes(".confide.v1.TaskPart.data")
        .compile_fds(fds)?;
    Ok(())
}

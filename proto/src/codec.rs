//! The gRPC codec of every Confide call: prost's, with small buffers.
//!
//! tonic gives each request and response stream an encode or decode buffer
//! of 8 KiB up front, and an encode buffer collects ready messages until
//! 32 KiB before it yields them. The buffer keeps its largest size for the
//! stream's life. A coordinator holds one task stream per site for the whole
//! federation, and while a site waits for its upload slot it holds the
//! upload's request and reply streams too: at a thousand sites tonic's
//! encode buffers alone held 15.7 MB at the coordinator's peak (heaptrack,
//! docs/performance.md). Here they start at [`BUFFER_BYTES`] and yield at
//! [`YIELD_BYTES`], so an encode buffer grows to less than `YIELD_BYTES`
//! plus the largest message it carries (a task part, a model or upload
//! chunk), not 32 KiB plus it. Messages are encoded exactly as before.
//!
//! ```
//! use confide_proto::codec::ConfideCodec;
//! use confide_proto::v1::{Task, TasksRequest};
//! use tonic::codec::Codec;
//! // What the generated Site client and server build their streams with.
//! let mut codec = ConfideCodec::<TasksRequest, Task>::default();
//! let (_encoder, _decoder) = (codec.encoder(), codec.decoder());
//! ```

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of a stream.
pub const BUFFER_BYTES: usize = 1024;

/// An encode buffer is handed to HTTP/2 once it holds this much. Equal to
/// a task part ([`crate::task_parts::TASK_PART_BYTES`]): a stream of parts
/// yields each one as it is encoded instead of collecting several.
pub const YIELD_BYTES: usize = crate::task_parts::TASK_PART_BYTES;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

/// prost's codec with Confide's buffer settings; named by the generated
/// clients and servers (`build.rs`).
#[derive(Debug)]
pub struct ConfideCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for ConfideCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for ConfideCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

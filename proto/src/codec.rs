//! The protobuf codec every generated client and server uses: tonic's
//! prost codec with a smaller first buffer.
//!
//! tonic starts each call's encode and decode buffers at 8 KiB. Nearly all
//! of Shoal's messages are a few hundred bytes, and an 8 KiB allocation is
//! past glibc's per-thread cache, so every call paid two trips into the
//! allocator's shared bins (and their consolidation) for nothing. The
//! buffers still grow to whatever a message needs (raft entries, snapshot
//! chunks).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A buffer's first size: within glibc's thread cache (chunks up to
/// 1,032 bytes), and larger than a typical control call's message.
const FIRST_BUFFER: usize = 512;

/// How much a streaming body encodes before it yields to the runtime
/// (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// A `tonic_prost::ProstCodec` whose buffers start at `FIRST_BUFFER` bytes.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
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

//! The codec of every raftkv gRPC service and client: prost's, except that the encoder makes
//! room for the whole message before it writes it. tonic hands the encoder a buffer of 8 KiB,
//! and prost writes into it as it goes, so a message of 1 MiB or more (a batch reply of large
//! values, a snapshot chunk) grew the buffer by doubling, copying what was written at every
//! step: in the router, forwarding 1 MiB gets, those copies and the fresh pages they touched
//! were about a tenth of its CPU (BENCHMARKS.md, "Large values: unbatched gets through the
//! router"). Decoding needs no change: tonic reserves a message's length from its header.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// A [`Codec`] for `application/grpc+proto` that encodes with [`SizedEncoder`] and decodes as
/// prost does. The generated services and clients use it (`build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct SizedCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        SizedCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes a prost message into a buffer first grown to the message's encoded length.
#[derive(Debug, Clone, Copy)]
pub struct SizedEncoder<T>(PhantomData<fn() -> T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|error| Status::internal(format!("cannot encode a message: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, Bytes};
    use http_body_util::BodyExt;
    use tonic::codec::EncodeBody;

    use super::*;
    use crate::pb;

    /// Encodes `message` as a client sends it and returns the body's bytes.
    async fn encoded<T: Message + Send + 'static>(message: T) -> Bytes {
        let source = tokio_stream::once(Ok(message));
        let body = EncodeBody::new_client(SizedEncoder(PhantomData), source, None, Some(usize::MAX));
        body.collect().await.expect("the body").to_bytes()
    }

    #[tokio::test]
    async fn a_message_larger_than_the_first_buffer_is_framed_and_encoded_as_prost_encodes_it() {
        for value_bytes in [0, 100, 8 << 10, 3 << 20] {
            let request = pb::PutRequest {
                key: Bytes::from_static(b"key"),
                value: Bytes::from(vec![7u8; value_bytes]),
                ..Default::default()
            };
            let mut body = encoded(request.clone()).await;
            assert_eq!(body.get_u8(), 0, "not compressed");
            assert_eq!(
                body.get_u32() as usize,
                body.len(),
                "the length prefix is the message's"
            );
            assert_eq!(body, request.encode_to_vec(), "{value_bytes}-byte value");
            assert_eq!(pb::PutRequest::decode(body).unwrap(), request);
        }
    }
}

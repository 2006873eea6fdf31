//! The codec of every generated service: prost encoding, and a decoder that answers a body it
//! cannot decode (truncated, not protobuf, a string field holding invalid UTF-8) with
//! INVALID_ARGUMENT and `ErrorInfo{reason: "MALFORMED_REQUEST"}`. tonic's own codec answers
//! INTERNAL with the decoder's message, which blames the server for the client's bytes.
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

/// Must match the API's `ERROR_DOMAIN`.
const ERROR_DOMAIN: &str = "coursewire";

#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|_| malformed())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status of a message that does not decode. It does not echo the decoder's error: that
/// describes our parser, not what the client should change.
pub fn malformed() -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info("MALFORMED_REQUEST", ERROR_DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        "the message could not be decoded: it is truncated, not protobuf, or a string field is not valid UTF-8",
        details,
    )
}

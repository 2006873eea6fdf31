//! gRPC response → HTTP response: messages as JSON (one object, or one line each for a
//! server stream), statuses as HTTP codes with Google's JSON error body, carrying the same
//! `ErrorInfo` reason and details a gRPC client gets.
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::body::Body;

/// The gRPC frame header: a compression flag and a 4-byte big-endian length.
const FRAME_HEADER: usize = 5;

/// Splits a body's bytes into gRPC messages as they arrive.
#[derive(Default)]
pub struct Frames(BytesMut);

impl Frames {
    pub fn push(&mut self, data: Bytes) {
        self.0.extend_from_slice(&data);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Option<Bytes> {
        if self.0.len() < FRAME_HEADER {
            return None;
        }
        let len = u32::from_be_bytes(self.0[1..FRAME_HEADER].try_into().expect("4 bytes")) as usize;
        if self.0.len() < FRAME_HEADER + len {
            return None;
        }
        self.0.advance(FRAME_HEADER);
        Some(self.0.split_to(len).freeze())
    }
}

/// One gRPC message framed for the inner service (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(FRAME_HEADER + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.freeze()
}

/// A message as proto3 JSON with the proto field names (as our events and docs write them)
/// and every field present, defaults included, so reports have stable columns.
pub fn to_json(output: &MessageDescriptor, message: Bytes) -> Result<Vec<u8>, tonic::Status> {
    let message =
        DynamicMessage::decode(output.clone(), message).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut out = serde_json::Serializer::new(Vec::new());
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    message.serialize_with_options(&mut out, &options).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(out.into_inner())
}

/// The failure in trailers (or, for a trailers-only response, headers), if the call failed.
pub fn failure(map: &HeaderMap) -> Option<tonic::Status> {
    map.get("grpc-status")?;
    tonic::Status::from_header_map(map).filter(|s| s.code() != tonic::Code::Ok)
}

/// HTTP's reading of a gRPC code, as Google's APIs map them (AIP-193), with one refinement:
/// a message over the size limit is 413, not 429.
pub fn http_status(status: &tonic::Status) -> StatusCode {
    use tonic::Code::*;
    match status.code() {
        Ok => StatusCode::OK,
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        ResourceExhausted if reason(status).as_deref() == Some("MESSAGE_TOO_LARGE") => StatusCode::PAYLOAD_TOO_LARGE,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Cancelled => StatusCode::from_u16(499).expect("in range"),
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

/// `{"error": {"code": 404, "status": "NOT_FOUND", "message": …, "details": [ErrorInfo, …]}}`:
/// the shape Google's HTTP APIs use, the details decoded from `grpc-status-details-bin`.
pub fn error_json(status: &tonic::Status) -> serde_json::Value {
    let details = google_rpc_status(status).unwrap_or_default();
    serde_json::json!({
        "error": {
            "code": http_status(status).as_u16(),
            "status": code_name(status.code()),
            "message": status.message(),
            "details": details,
        }
    })
}

fn google_rpc_status(status: &tonic::Status) -> Option<serde_json::Value> {
    let pool = super::routes::pool();
    let desc = pool.get_message_by_name("google.rpc.Status")?;
    let decoded = DynamicMessage::decode(desc, status.details()).ok()?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut json = decoded.serialize_with_options(serde_json::value::Serializer, &options).ok()?;
    Some(json.get_mut("details")?.take())
}

pub fn code_name(code: tonic::Code) -> String {
    // `tonic::Code`'s Debug is CamelCase (`NotFound`); gRPC and Google write NOT_FOUND.
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// An HTTP error response for `status`, keeping `headers` the call produced (request id,
/// rate limits, `retry-after`).
pub fn error_response(status: &tonic::Status, headers: HeaderMap) -> http::Response<Body> {
    let mut body = serde_json::to_vec(&error_json(status)).expect("JSON");
    body.push(b'\n');
    let mut response = json_response(http_status(status), body, headers);
    if response.status() == StatusCode::UNAUTHORIZED {
        // Lets a browser ask for the key (as the user name) the way Skilljar's pages do.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Coursewire API\""));
    }
    response
}

pub fn json_response(status: StatusCode, body: impl Into<Bytes>, headers: HeaderMap) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(body.into())));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The headers of a gRPC response worth passing on: all but gRPC's own.
pub fn passed_on(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let name_str = name.as_str();
        if !(name_str.starts_with("grpc-") || name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Reads a unary call's whole response: its one message, or the status it failed with.
pub async fn unary(response: http::Response<Body>, output: &MessageDescriptor) -> http::Response<Body> {
    let (parts, mut body) = response.into_parts();
    let headers = passed_on(&parts.headers);
    if let Some(status) = failure(&parts.headers) {
        return error_response(&status, headers);
    }
    let mut frames = Frames::default();
    let mut message = None;
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    frames.push(data);
                    message = message.or_else(|| frames.next_message());
                }
                Err(frame) => trailers = frame.into_trailers().unwrap_or_default(),
            },
            Err(e) => return error_response(&e, headers),
        }
    }
    match (failure(&trailers), message) {
        (Some(status), _) => error_response(&status, headers),
        (_, Some(message)) => match to_json(output, message) {
            Ok(mut json) => {
                // A terminal shows `curl`'s answer on its own line.
                json.push(b'\n');
                json_response(StatusCode::OK, json, headers)
            }
            Err(status) => error_response(&status, headers),
        },
        (_, None) => error_response(&tonic::Status::internal("the call ended without a response"), headers),
    }
}

/// Streams a server-streaming call as newline-delimited JSON, a message per line as it
/// arrives (constant memory, as over gRPC). A failure after the first line ends the stream
/// with one `{"error": …}` line, since the HTTP status has been sent.
pub fn ndjson(response: http::Response<Body>, output: MessageDescriptor) -> http::Response<Body> {
    let (parts, body) = response.into_parts();
    let headers = passed_on(&parts.headers);
    if let Some(status) = failure(&parts.headers) {
        return error_response(&status, headers);
    }
    let lines = futures::stream::unfold((body, Frames::default(), false), move |(mut body, mut frames, done)| {
        let output = output.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if let Some(message) = frames.next_message() {
                    let line = match to_json(&output, message) {
                        Ok(mut json) => {
                            json.push(b'\n');
                            json
                        }
                        Err(status) => return Some((error_line(&status), (body, frames, true))),
                    };
                    return Some((Ok(http_body::Frame::data(Bytes::from(line))), (body, frames, false)));
                }
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => frames.push(data),
                        Err(frame) => {
                            let trailers = frame.into_trailers().unwrap_or_default();
                            let failed = failure(&trailers);
                            return failed.map(|status| (error_line(&status), (body, frames, true)));
                        }
                    },
                    Some(Err(status)) => return Some((error_line(&status), (body, frames, true))),
                    None => return None,
                }
            }
        }
    });
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(lines)));
    *response.headers_mut() = headers;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// What an NDJSON body yields: lines, never errors (a failure is a line too).
type Line = Result<http_body::Frame<Bytes>, tonic::Status>;

fn error_line(status: &tonic::Status) -> Line {
    let mut line = serde_json::to_vec(&error_json(status)).expect("JSON");
    line.push(b'\n');
    Ok(http_body::Frame::data(Bytes::from(line)))
}

/// Encodes and frames a request message for the inner gRPC service.
pub fn grpc_body(message: Vec<u8>) -> Body {
    Body::new(http_body_util::Full::new(frame(&message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_messages_across_and_within_chunks() {
        let mut frames = Frames::default();
        let two = [frame(b"abc"), frame(b"")].concat();
        frames.push(Bytes::copy_from_slice(&two[..4]));
        assert_eq!(frames.next_message(), None);
        frames.push(Bytes::copy_from_slice(&two[4..]));
        assert_eq!(frames.next_message().as_deref(), Some(&b"abc"[..]));
        assert_eq!(frames.next_message().as_deref(), Some(&b""[..]));
        assert_eq!(frames.next_message(), None);
    }

    #[test]
    fn codes_map_to_the_http_statuses_clients_expect() {
        let status = |e: coursewire_core::error::ApiError| tonic::Status::from(e);
        use coursewire_core::error::{ApiError, Reason};
        assert_eq!(http_status(&status(ApiError::field("x", "bad"))), 400);
        assert_eq!(http_status(&status(ApiError::new(Reason::KeyUnknown, "no"))), 401);
        assert_eq!(http_status(&status(ApiError::new(Reason::ScopeMissing, "no"))), 403);
        assert_eq!(http_status(&status(ApiError::not_found("user", "u"))), 404);
        assert_eq!(http_status(&status(ApiError::new(Reason::UserEmailExists, "no"))), 409);
        assert_eq!(http_status(&status(ApiError::new(Reason::EtagMismatch, "no"))), 409);
        assert_eq!(http_status(&status(ApiError::new(Reason::RateLimited, "no"))), 429);
        assert_eq!(http_status(&status(ApiError::new(Reason::MessageTooLarge, "no"))), 413);
        assert_eq!(http_status(&status(ApiError::unavailable("no"))), 503);
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
        let json = error_json(&status(ApiError::not_found("user", "usr_1")));
        assert_eq!(json["error"]["code"], 404);
        assert_eq!(json["error"]["status"], "NOT_FOUND");
        let info = &json["error"]["details"][0];
        assert_eq!(info["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
        assert_eq!(info["reason"], "NOT_FOUND");
        assert_eq!(info["metadata"]["resource_id"], "usr_1");
    }
}

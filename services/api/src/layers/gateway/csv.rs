//! CSV for spreadsheets and BI tools: a List or Export route answers `text/csv` when asked
//! (`Accept: text/csv`, or `?alt=csv` for tools that cannot set headers; `&excel=true` adds
//! the byte-order mark Excel needs to read UTF-8). Every row is sent, however many: a List
//! is walked page by page (1,000 rows each) as the download streams, so memory stays flat,
//! and the whole download is charged as one call (the pages after the first are marked
//! `Prepaid`). Columns are the item's proto field names, in declaration order; timestamps
//! RFC 3339 UTC; nested values JSON. RFC 4180 quoting, CRLF line ends. A text cell that a
//! spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) is prefixed with `'`
//! (OWASP's advice). A failure before the first row is an ordinary error answer; after it,
//! the download is aborted, so a client never mistakes a cut file for a whole one.
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions, Value as Field,
};
use serde_json::Value;
use tonic::body::Body;
use tower::{BoxError, ServiceExt};

use super::response::{self, Frames, error_response, failure, passed_on};
use super::routes::Route;
use crate::layers::limits::Prepaid;
use coursewire_core::error::ApiError;

/// What the caller asked for.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Start with a UTF-8 byte-order mark.
    excel: bool,
}

/// Whether the request asks for CSV, and its query without the CSV options (`alt`, `excel`),
/// which are not request fields.
pub fn asked(headers: &HeaderMap, query: Option<&str>) -> Result<(Option<Options>, Option<String>), ApiError> {
    let mut alt_csv = false;
    let mut excel = false;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    let mut kept = 0;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (&*name, &*value) {
            ("alt", "csv") => alt_csv = true,
            ("alt", "json") => {}
            ("alt", _) => return Err(ApiError::field("alt", "must be `json` or `csv`")),
            ("excel", "true") => excel = true,
            ("excel", "false") => {}
            ("excel", _) => return Err(ApiError::field("excel", "must be `true` or `false`")),
            _ => {
                rest.append_pair(&name, &value);
                kept += 1;
            }
        }
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let wanted = alt_csv || accept.split(',').any(|t| t.trim().starts_with("text/csv"));
    let rest = (kept > 0).then(|| rest.finish());
    Ok((wanted.then_some(Options { excel }), rest))
}

/// Whether `route` answers CSV (a List or an Export).
pub fn serves(route: &Route) -> bool {
    shape(route).is_some()
}

/// How a route's answer becomes rows.
enum Shape {
    /// A List: its items are this repeated field; the next page's token is `next_page_token`.
    Pages(FieldDescriptor),
    /// An Export: every streamed message is a row.
    Stream,
}

fn shape(route: &Route) -> Option<(Shape, MessageDescriptor)> {
    let output = route.method.output();
    if route.server_streaming() {
        return Some((Shape::Stream, output));
    }
    output.get_field_by_name("next_page_token")?;
    let items = output.fields().find(|f| f.is_list() && matches!(f.kind(), Kind::Message(_)))?;
    let Kind::Message(item) = items.kind() else { return None };
    Some((Shape::Pages(items), item))
}

/// The gRPC request the gateway built, kept to send again for the following pages.
#[derive(Clone)]
pub struct Call {
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub extensions: http::Extensions,
}

impl Call {
    fn request(&self, message: Vec<u8>, prepaid: bool) -> http::Request<Body> {
        let mut req = http::Request::new(response::grpc_body(message));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = http::Version::HTTP_2;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        if prepaid {
            req.extensions_mut().insert(Prepaid);
        }
        req
    }
}

/// Answers `route` as CSV.
pub async fn respond<S>(inner: S, route: &Route, call: Call, message: Vec<u8>, options: Options) -> http::Response<Body>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let Some((shape, item)) = shape(route) else {
        let e =
            ApiError::field("alt", format!("CSV is served for List and Export routes; {} is neither", route.template));
        return error_response(&tonic::Status::from(e), HeaderMap::new());
    };
    // A List is asked for its largest pages.
    let request = DynamicMessage::decode(route.method.input(), message.as_slice()).expect("the gateway encoded it");
    let request = match shape {
        Shape::Pages(_) => {
            let mut request = request;
            request.set_field_by_name("page_size", Field::I32(crate::page::MAX_PAGE_SIZE as i32));
            request
        }
        Shape::Stream => request,
    };
    let first = match inner.clone().oneshot(call.request(request.encode_to_vec(), false)).await {
        Ok(first) => first,
        Err(e) => return error_response(&tonic::Status::unavailable(e.into().to_string()), HeaderMap::new()),
    };
    let (parts, body) = first.into_parts();
    let mut headers = passed_on(&parts.headers);
    if let Some(status) = failure(&parts.headers) {
        return error_response(&status, headers);
    }
    let mut head = BytesMut::new();
    if options.excel {
        head.extend_from_slice("\u{feff}".as_bytes());
    }
    head.extend_from_slice(&header_row(&item));
    let rows: futures::stream::BoxStream<'static, Result<Bytes, BoxError>> = match shape {
        Shape::Stream => Box::pin(streamed_rows(body, item)),
        Shape::Pages(items) => {
            // The first page decides the status: read it before answering.
            let page = match read_page(body, &route.method.output()).await {
                Ok(page) => page,
                Err(status) => return error_response(&status, headers),
            };
            Box::pin(paged_rows(inner, call, request, items, page))
        }
    };
    let body = futures::stream::once(async move { Ok::<_, BoxError>(head.freeze()) })
        .chain(rows)
        .map(|chunk| chunk.map(http_body::Frame::data));
    let file = route.method.name().trim_start_matches("List").trim_start_matches("Export").to_ascii_lowercase();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8; header=present"));
    let disposition = format!("attachment; filename=\"{file}.csv\"");
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("ASCII"));
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(body)));
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response
}

/// A unary answer's message, or the status it failed with.
async fn read_page(mut body: Body, output: &MessageDescriptor) -> Result<DynamicMessage, tonic::Status> {
    let mut frames = Frames::default();
    let mut message = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                frames.push(data);
                message = message.or_else(|| frames.next_message());
            }
            Err(frame) => {
                if let Some(status) = frame.into_trailers().ok().as_ref().and_then(failure) {
                    return Err(status);
                }
            }
        }
    }
    let message = message.ok_or_else(|| tonic::Status::internal("the call ended without a response"))?;
    DynamicMessage::decode(output.clone(), message).map_err(|e| tonic::Status::internal(e.to_string()))
}

/// Where a List download stands: a page's rows to send, the next page to ask for, or done.
enum Step {
    Rows(DynamicMessage),
    Fetch(String),
    Done,
}

/// Rows of every page: a page's rows go out as soon as it is read; the next page is asked
/// for when the caller has taken them.
fn paged_rows<S>(
    inner: S,
    call: Call,
    request: DynamicMessage,
    items: FieldDescriptor,
    first: DynamicMessage,
) -> impl futures::Stream<Item = Result<Bytes, BoxError>> + Send
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let output = first.descriptor();
    futures::stream::unfold(Step::Rows(first), move |step| {
        let (inner, call, items, output) = (inner.clone(), call.clone(), items.clone(), output.clone());
        let mut request = request.clone();
        async move {
            let page = match step {
                Step::Done => return None,
                Step::Rows(page) => page,
                Step::Fetch(token) => {
                    request.set_field_by_name("page_token", Field::String(token));
                    let next = async {
                        let answer =
                            inner.oneshot(call.request(request.encode_to_vec(), true)).await.map_err(Into::into)?;
                        let (parts, body) = answer.into_parts();
                        if let Some(status) = failure(&parts.headers) {
                            return Err(BoxError::from(status));
                        }
                        read_page(body, &output).await.map_err(BoxError::from)
                    };
                    match next.await {
                        Ok(page) => page,
                        Err(e) => return Some((Err(e), Step::Done)),
                    }
                }
            };
            let then = match page.get_field_by_name("next_page_token").as_deref() {
                Some(Field::String(token)) if !token.is_empty() => Step::Fetch(token.clone()),
                _ => Step::Done,
            };
            Some((Ok(rows_of(&page, &items)), then))
        }
    })
}

/// Rows of a server stream, a message at a time.
fn streamed_rows(body: Body, item: MessageDescriptor) -> impl futures::Stream<Item = Result<Bytes, BoxError>> + Send {
    futures::stream::unfold((body, Frames::default(), false), move |(mut body, mut frames, done)| {
        let item = item.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if let Some(message) = frames.next_message() {
                    let row = DynamicMessage::decode(item.clone(), message).map_err(BoxError::from).map(|m| row(&m));
                    return Some((row, (body, frames, false)));
                }
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => frames.push(data),
                        Err(frame) => {
                            let failed = frame.into_trailers().ok().as_ref().and_then(failure);
                            return failed.map(|status| (Err(BoxError::from(status)), (body, frames, true)));
                        }
                    },
                    Err(status) => return Some((Err(BoxError::from(status)), (body, frames, true))),
                }
            }
        }
    })
}

fn rows_of(page: &DynamicMessage, items: &FieldDescriptor) -> Bytes {
    let mut out = BytesMut::new();
    if let Field::List(list) = &*page.get_field(items) {
        for entry in list {
            if let Field::Message(m) = entry {
                out.extend_from_slice(&row(m));
            }
        }
    }
    out.freeze()
}

fn header_row(item: &MessageDescriptor) -> Bytes {
    let names: Vec<String> = item.fields().map(|f| f.name().to_string()).collect();
    line(names.iter().map(String::as_str))
}

/// One item as a CSV line: its fields as proto3 JSON writes them, in declaration order.
fn row(message: &DynamicMessage) -> Bytes {
    // As the JSON answers write it: proto names, every field, 64-bit integers as strings.
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    let json = message.serialize_with_options(serde_json::value::Serializer, &options).unwrap_or(Value::Null);
    let cells: Vec<String> = message
        .descriptor()
        .fields()
        .map(|f| match &json[f.name()] {
            Value::Null => String::new(),
            Value::String(s) if f.kind() == Kind::String && !f.is_list() => defused(s),
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            nested => nested.to_string(),
        })
        .collect();
    line(cells.iter().map(String::as_str))
}

/// A text cell a spreadsheet would evaluate as a formula, made inert.
fn defused(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_string() }
}

/// Cells joined by commas, quoted where RFC 4180 requires, ended by CRLF.
fn line<'a>(cells: impl Iterator<Item = &'a str>) -> Bytes {
    let mut out = String::new();
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if cell.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(
            line(["a", "b,c", "say \"hi\"", "two\nlines"].into_iter()),
            "a,\"b,c\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
        assert_eq!(defused("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(defused("-1+1"), "'-1+1");
        assert_eq!(defused("Ada"), "Ada");
    }

    #[test]
    fn csv_is_asked_by_accept_or_alt_and_its_options_are_not_fields() {
        let mut headers = HeaderMap::new();
        assert!(asked(&headers, Some("page_size=5")).unwrap().0.is_none());
        let (options, rest) = asked(&headers, Some("alt=csv&excel=true&state=ACTIVE")).unwrap();
        assert!(options.unwrap().excel);
        assert_eq!(rest.as_deref(), Some("state=ACTIVE"));
        assert!(asked(&headers, Some("alt=json")).unwrap().0.is_none());
        assert!(asked(&headers, Some("alt=xml")).is_err() && asked(&headers, Some("excel=yes")).is_err());
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/csv"));
        assert_eq!(asked(&headers, None).unwrap().1, None);
        assert!(asked(&headers, None).unwrap().0.is_some());
    }
}

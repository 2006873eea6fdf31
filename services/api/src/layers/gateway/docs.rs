//! `/docs`: an interactive reference of the OpenAPI document (Swagger UI, vendored from the
//! npm registry and embedded at build time, so it works offline), where a person pastes a
//! key as the Basic-auth user name and tries calls, as Skilljar's reference works.
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use tonic::body::Body;

/// (path, content type, file)
const FILES: &[(&str, &str, &[u8])] = &[
    ("/docs", "text/html; charset=utf-8", include_bytes!("../../../assets/docs.html")),
    (
        "/docs/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    ("/docs/swagger-ui.css", "text/css; charset=utf-8", include_bytes!("../../../assets/swagger-ui/swagger-ui.css")),
];

/// The page or asset at `path`, if it is one of ours.
pub fn file(path: &str) -> Option<http::Response<Body>> {
    let path = if path == "/docs/" { "/docs" } else { path };
    let (_, content_type, bytes) = FILES.iter().find(|(p, _, _)| *p == path)?;
    // The page runs no script but Swagger UI's own, and is never framed (clickjacking).
    let csp = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";
    Some(served(content_type, Bytes::from_static(bytes), csp))
}

/// A reference page or asset: 200 with its type, its Content-Security-Policy and nosniff.
pub fn served(content_type: &'static str, bytes: Bytes, csp: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(bytes)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

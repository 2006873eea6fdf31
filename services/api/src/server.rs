//! Assembles the gRPC server: services, HTTP/JSON and gRPC-Web on the same port, auth layer, reflection (v1 and v1alpha, for
//! grpcurl 1.8), health that follows the database and the broker, and graceful shutdown.
use std::future::Future;
use std::sync::Arc;

use coursewire_proto::v1::account_service_server::AccountServiceServer;
use coursewire_proto::v1::api_key_service_server::ApiKeyServiceServer;
use coursewire_proto::v1::course_service_server::CourseServiceServer;
use coursewire_proto::v1::domain_service_server::DomainServiceServer;
use coursewire_proto::v1::domain_user_service_server::DomainUserServiceServer;
use coursewire_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use coursewire_proto::v1::event_service_server::EventServiceServer;
use coursewire_proto::v1::group_service_server::GroupServiceServer;
use coursewire_proto::v1::learning_path_service_server::LearningPathServiceServer;
use coursewire_proto::v1::organization_service_server::OrganizationServiceServer;
use coursewire_proto::v1::published_course_service_server::PublishedCourseServiceServer;
use coursewire_proto::v1::user_service_server::UserServiceServer;
use coursewire_proto::v1::webhook_service_server::WebhookServiceServer;
use futures::FutureExt;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::AppState;
use crate::account::AccountApi;
use crate::api_keys::ApiKeyApi;
use crate::console::{ConsoleLayer, Site};
use crate::courses::CourseApi;
use crate::domain_users::DomainUserApi;
use crate::domains::DomainApi;
use crate::enrollments::EnrollmentApi;
use crate::events::EventApi;
use crate::groups::GroupApi;
use crate::layers::admission::Pace;
use crate::layers::around::Around;
use crate::layers::auth::{Authenticate, Authenticator};
use crate::layers::gateway::{HttpJsonLayer, MAX_MESSAGE_BYTES};
use crate::layers::limits::layer::RateLimit;
use crate::layers::metrics::{RpcMetricsLayer, UnmatchedLayer};
use crate::layers::request_id::RequestIdLayer;
use crate::learning_paths::LearningPathApi;
use crate::organizations::OrganizationApi;
use crate::published_courses::PublishedCourseApi;
use crate::users::UserApi;
use crate::webhooks::WebhookApi;
use coursewire_core::error::{ApiError, Reason};

macro_rules! limited {
    ($server:ident, $api:expr) => {
        $server::new($api).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
}

/// Who may forward client addresses to us (`--trusted-proxies`).
pub type TrustedProxies = Vec<ipnet::IpNet>;

/// Where the API listens: gRPC (with gRPC-Web, and HTTP/JSON unless `http` is set), and
/// optionally a listener of its own for HTTP/JSON (`--http-listen`); and which web origins
/// may call them from a browser.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    pub cors_allowed_origins: Vec<String>,
}

/// Serves the API on `listeners` until `shutdown` completes, then drains in-flight calls.
pub async fn serve(
    state: Arc<AppState>,
    trusted_proxies: TrustedProxies,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    crate::metrics::describe();
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(coursewire_core::health::follow(
        state.db.clone(),
        state.hub.bus_connected.subscribe(),
        health,
        &["coursewire.v1.EnrollmentService", "coursewire.v1.UserService", "coursewire.v1.AccountService"],
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(coursewire_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(coursewire_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(limited!(AccountServiceServer, AccountApi(state.clone())))
        .add_service(limited!(ApiKeyServiceServer, ApiKeyApi(state.clone())))
        .add_service(limited!(OrganizationServiceServer, OrganizationApi(state.clone())))
        .add_service(limited!(DomainServiceServer, DomainApi(state.clone())))
        .add_service(limited!(UserServiceServer, UserApi(state.clone())))
        .add_service(limited!(CourseServiceServer, CourseApi(state.clone())))
        .add_service(limited!(PublishedCourseServiceServer, PublishedCourseApi(state.clone())))
        .add_service(limited!(DomainUserServiceServer, DomainUserApi(state.clone())))
        .add_service(limited!(EnrollmentServiceServer, EnrollmentApi(state.clone())))
        .add_service(limited!(LearningPathServiceServer, LearningPathApi(state.clone())))
        .add_service(limited!(GroupServiceServer, GroupApi(state.clone())))
        .add_service(limited!(EventServiceServer, EventApi(state.clone())))
        .add_service(limited!(WebhookServiceServer, WebhookApi(state.clone())));
    let routes = routes.routes();

    let auth = Authenticator::new(state.db.clone(), state.clock.clone(), trusted_proxies);
    let gateway = HttpJsonLayer::new()?;
    let console = ConsoleLayer::new(Arc::new(Site {
        config: state.console.clone(),
        auth: auth.clone(),
        db: state.db.clone(),
        clock: state.clock.clone(),
    }));
    let cors = cors(&listeners.cors_allowed_origins)?;
    // Outermost first (see `layers`): name the call (request id), so every answer carries
    // one; count the answers no method gives; serve the web console (`/console`, a client of
    // everything below); answer CORS preflights; translate HTTP/JSON
    // and gRPC-Web (browsers, over HTTP/1.1 or HTTP/2) into gRPC, so everything below sees
    // one protocol; measure the call by method, authenticate, count it against its
    // organization's limits, then (a write, while the webhook dispatchers are behind) wait
    // for its turn.
    let layers = |http_json: bool| {
        tower::ServiceBuilder::new()
            .layer(RequestIdLayer::new(&state.console.base_url))
            .layer(UnmatchedLayer)
            .layer(console.clone().enabled(http_json))
            .option_layer(cors.clone())
            .layer(gateway.clone().enabled(http_json))
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(RpcMetricsLayer)
            .map_response(oversized_is_resource_exhausted)
            .layer(Around(Authenticate(auth.clone())))
            .layer(Around(RateLimit(state.limiter.clone())))
            .layer(Around(Pace(state.admission.clone())))
    };
    // Streams end (with a cursor) when stopping, or the graceful drain would wait on them.
    let streams = state.streams.clone();
    let shutdown = async move {
        shutdown.await;
        streams.stop();
    }
    .shared();
    let serve_on = |listener: TcpListener, http_json: bool| {
        Server::builder()
            // HTTP/JSON and gRPC-Web clients may speak HTTP/1.1 (plain gRPC needs HTTP/2).
            .accept_http1(true)
            .layer(layers(http_json))
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(incoming(listener), shutdown.clone())
    };
    tracing::info!(addr = %listeners.grpc.local_addr()?, "gRPC API listening");
    match listeners.http {
        None => serve_on(listeners.grpc, true).await?,
        Some(http) => {
            tracing::info!(addr = %http.local_addr()?, "HTTP/JSON API listening");
            tokio::try_join!(serve_on(listeners.grpc, false), serve_on(http, true))?;
        }
    }
    health_task.abort();
    Ok(())
}

/// The listener's connections, each with TCP_NODELAY. Serving from a listener of our own
/// skips the builder's `tcp_nodelay`; without it a response's last frame (the trailers)
/// waits in the kernel for the client's delayed ACK, which added up to the next request's
/// arrival (~10 ms at 600 calls/s) to unary calls.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// CORS for `origins` (none: no layer, so browsers allow same-origin pages only). Keys
/// travel in headers a page sets itself, never in cookies, so credentials stay disallowed.
fn cors(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use http::{Method, header};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins.iter().map(|o| http::HeaderValue::from_str(o)).collect::<Result<Vec<_>, _>>()?;
    let name = http::HeaderName::from_static;
    Ok(Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::PUT])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                name("x-api-key"),
                name("x-request-id"),
                name("traceparent"),
                // gRPC-Web clients send these.
                name("x-grpc-web"),
                name("x-user-agent"),
                name("grpc-timeout"),
            ])
            .expose_headers([
                name("x-request-id"),
                name("x-ratelimit-limit"),
                name("x-ratelimit-remaining"),
                name("x-ratelimit-reset"),
                header::RETRY_AFTER,
                name("grpc-status"),
                name("grpc-message"),
                name("grpc-status-details-bin"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE and no details; gRPC's
/// convention is RESOURCE_EXHAUSTED, and ours is an ErrorInfo on every error.
fn oversized_is_resource_exhausted(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let out_of_range = response.headers().get("grpc-status").is_some_and(|s| s == "11");
    let too_large = || {
        // grpc-message is percent-encoded (spaces are %20).
        let message = response.headers().get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
        message.replace("%20", " ").contains("length too large")
    };
    if !(out_of_range && too_large()) {
        return response;
    }
    let e = ApiError::new(
        Reason::MessageTooLarge,
        format!("messages are limited to {} MiB", MAX_MESSAGE_BYTES / (1024 * 1024)),
    )
    .with("limit_bytes", MAX_MESSAGE_BYTES.to_string())
    .help("split the request (batches take at most 1,000 items)");
    tonic::Status::from(e).into_http()
}

/// Completes on Ctrl-C or SIGTERM: what both binaries stop on.
pub use coursewire_core::shutdown::signal as shutdown_signal;

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use coursewire_core::error::Reason;

    /// The proto crate answers undecodable messages itself (it knows no `Reason`): it must
    /// use the documented one.
    #[test]
    fn undecodable_messages_carry_the_documented_reason() {
        let status = coursewire_proto::codec::malformed();
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, Reason::MalformedRequest.as_str());
        assert_eq!(status.code() as i32, Reason::MalformedRequest.code() as i32);
    }

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        use futures::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.expect("a connection").unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY on the accepted socket");
    }
}

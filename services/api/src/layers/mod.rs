//! The request pipeline: the layers every call passes, outermost first, before it reaches a
//! resource's handler. `server.rs` stacks them in this order:
//!
//! ```text
//!   request_id      x-request-id and trace context, on every answer the process gives
//!    └─ metrics (UnmatchedLayer)  counts answers no method gave, as `unmatched`
//!        └─ (crate::console: /console pages, which call everything below as a client)
//!        └─ CORS (tower-http; only with --cors-allowed-origins)
//!            └─ gateway       HTTP/JSON → gRPC (routes, bodies, /openapi.json, /docs)
//!                └─ gRPC-Web  (tonic-web) → gRPC
//!                    └─ metrics (RpcMetricsLayer)  counts and times the call by method
//!                        └─ (server.rs: an oversized message → RESOURCE_EXHAUSTED)
//!                            └─ auth       key → `Caller` (scopes from `crate::policy`)
//!                                └─ limits     charges the organization's and key's windows
//!                                    └─ admission  paces writes while webhooks are behind
//!                                        └─ the resource services (one module each)
//! ```
//!
//! Auth, limits and admission are rules run by `around::Around`; the others are tower
//! layers written out. The layers share what they read through `crate::policy` (the
//! method table) and the `Caller` auth inserts; none imports one further out.
pub mod admission;
pub mod around;
pub mod auth;
pub mod gateway;
pub mod grpc_status;
pub mod limits;
pub mod metrics;
pub mod request_id;

//! End-to-end behaviour tests: the real gRPC server on a free port, typed clients, and
//! every test run over SQLite and (when configured) Postgres.
mod fixtures;
mod harness;

mod amqp;
mod auth;
mod bad_input;
mod batch_export;
mod cookbook;
mod deadlines;
mod delegation;
mod events;
mod fanout_crash;
mod flow;
mod groups;
mod grpc_web;
mod http_json;
mod idempotency;
mod isolation;
mod keys;
mod learning_paths;
mod limits;
mod log_secrets;
mod metrics;
mod otlp;
mod paging;
mod processes;
mod proxy;
mod races;
mod receiver;
mod replicas;
mod request_ids;
mod resources;
mod retention;
mod watch;
mod webhook_secrets;
mod webhooks;

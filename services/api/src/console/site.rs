//! What every console request shares: how the console is served and the parts it reads.
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::layers::auth::Authenticator;
use coursewire_core::store::Db;

/// How the console is served (`--console-base-url`, `--console-frame-ancestors`,
/// `--console-secure-cookies`).
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The origin sign-in links point at, e.g. `https://lms.example.com`; empty: this
    /// server's HTTP/JSON listener.
    pub base_url: String,
    /// Origins that may frame the console (an embedded partner portal); empty: none.
    pub frame_ancestors: Vec<String>,
    /// Mark the session cookie `Secure` even when the request did not arrive over TLS (behind
    /// a proxy that ends TLS).
    pub secure_cookies: bool,
}

/// What every console request shares.
pub struct Site {
    pub config: Config,
    pub auth: Arc<Authenticator>,
    pub db: Db,
    pub clock: SharedClock,
}

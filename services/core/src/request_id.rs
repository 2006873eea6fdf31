//! The id of the call being served. The API's request id layer sets it for the call's
//! future, so every error built while serving it names it (`ErrorInfo.metadata.request_id`)
//! and every log line inside carries it (the layer's span), wherever the error is made.
tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `call` as the call `id`.
pub async fn scope<F: std::future::Future>(id: String, call: F) -> F::Output {
    REQUEST_ID.scope(id, call).await
}

/// The id of the call this task serves, if it serves one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// A request id a client may choose: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`
/// (anything else is replaced, so ids are safe to log and to echo in headers).
pub fn is_acceptable(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_seen_inside_the_call_only() {
        assert_eq!(current(), None);
        let inside = scope("req_1".into(), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("req_1"));
        assert_eq!(current(), None);
        assert!(is_acceptable("3f2a-b9:c.d_e") && !is_acceptable("") && !is_acceptable("a b"));
        assert!(!is_acceptable(&"x".repeat(65)) && !is_acceptable("a\r\nb"));
    }
}

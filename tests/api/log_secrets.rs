//! Secrets never reach the logs: the all-in-one binary at `RUST_LOG=trace`, driven through
//! key creation, webhook creation with a custom header, secret rotation and deliveries;
//! no line after start-up holds an API key, a webhook secret or a header value.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coursewire_proto::v1::*;

use crate::harness::{Process, free_port};
use crate::processes::clients;
use crate::receiver::{Receiver, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_secret_or_header_value_is_logged_even_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .current_dir(dir.path())
        .env("RUST_LOG", "trace")
        .env_remove("COURSEWIRE_DATABASE_URL")
        .env_remove("COURSEWIRE_AMQP_URL")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--webhook-allow-private-targets", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stderr, lines) = (child.stderr.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let server = Process(child);
    let started = Instant::now();
    let (bootstrap, printed_at) = loop {
        let seen = lines.lock().unwrap().clone();
        let key = seen.iter().find_map(|l| l.split_whitespace().find(|w| w.starts_with("sk_")).map(String::from));
        if let (Some(key), true) = (key, seen.iter().any(|l| l.contains("listening"))) {
            // The bootstrap key is shown once, on purpose: those lines are the only exception.
            let last = seen.iter().rposition(|l| l.contains(&key)).unwrap();
            break (key, last);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no key and listening line: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A second key, made through the API, then used for everything else.
    let mut c = clients(port, &bootstrap).await;
    let made = ApiKey { label: "ci".into(), scopes: vec!["*".into()], ..Default::default() };
    let made = c.keys.create_api_key(CreateApiKeyRequest { api_key: Some(made) }).await.unwrap().into_inner();
    let key = made.secret.clone();
    let mut c = clients(port, &key).await;

    let receiver = Receiver::start(|_| Reply::status(204)).await;
    let header_value = "partner-token-7c1f9e3a5b";
    let hook = Webhook {
        url: receiver.url.clone(),
        event_types: vec!["user.*".into()],
        headers: [("x-partner-token".to_string(), header_value.to_string())].into(),
        ..Default::default()
    };
    let created =
        c.webhooks.create_webhook(CreateWebhookRequest { webhook: Some(hook), request_id: String::new() }).await;
    let created = created.unwrap().into_inner();
    let id = created.webhook.unwrap().id;
    let rotated = c.webhooks.rotate_webhook_secret(RotateWebhookSecretRequest { id: id.clone() }).await;
    let rotated = rotated.unwrap().into_inner();
    let read = c.webhooks.get_webhook_secret(GetWebhookSecretRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(read.secret, rotated.secret);
    crate::fixtures::user(&mut c, "ada@example.com").await;
    c.webhooks.send_test_event(SendTestEventRequest { id: id.clone() }).await.unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert!(got.iter().all(|r| r.headers.get("x-partner-token").is_some_and(|v| v == header_value)));

    // Stop the server and read every line it wrote.
    Command::new("kill").arg("-TERM").arg(server.0.id().to_string()).status().unwrap();
    drop(server);
    reader.join().unwrap();
    let lines = lines.lock().unwrap().clone();
    assert!(lines.len() > printed_at + 50, "trace logging is on: {} lines", lines.len());
    let secret_part = |s: &str| s.trim_start_matches("whsec_").to_string();
    let secrets = [
        ("the bootstrap key", bootstrap.clone()),
        ("the API-made key", key.clone()),
        ("the first webhook secret", secret_part(&created.secret)),
        ("the rotated webhook secret", secret_part(&rotated.secret)),
        ("a custom header value", header_value.to_string()),
    ];
    for (n, line) in lines.iter().enumerate().skip(printed_at + 1) {
        for (what, secret) in &secrets {
            assert!(!line.contains(secret.as_str()), "{what} is in log line {n}: {line}");
        }
    }
}

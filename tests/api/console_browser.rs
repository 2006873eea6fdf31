//! The console in headless Chromium (tests/browser/console.cjs, driven by playwright-core),
//! over SQLite and Postgres: a key made and revoked in the browser and tried with curl, a
//! webhook to a real receiver with a test event and a replay, a scoped session refused
//! server-side, a cross-site form, axe-core on every page, a phone-sized screen. Screenshots
//! land in `target/tmp/console-screenshots/<backend>/`.
use std::time::Duration;

use serde_json::json;

use crate::console::mint;
use crate::harness::{Backend, Harness};
use crate::receiver::Receiver;

async fn drive(backend: Backend) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = std::env::var("COURSEWIRE_NODE_PATH").expect("COURSEWIRE_NODE_PATH (.ci/run sets it)");
    for package in ["playwright-core", "axe-core"] {
        assert!(std::path::Path::new(&modules).join(package).exists(), "{package} in {modules} (.ci/run installs it)");
    }
    assert!(std::path::Path::new(&chromium).exists(), "Chromium at {chromium}");

    let h = Harness::start(backend).await;
    let receiver = Receiver::ok().await;
    let base = format!("http://{}", h.addr());
    let (_, link) = mint(&base, &h.key, json!({"scopes": ["*"]})).await;
    let (_, reader) = mint(&base, &h.key, json!({"scopes": ["webhooks:read"]})).await;
    let shots = format!("{}/console-screenshots/{backend:?}", env!("CARGO_TARGET_TMPDIR"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.cjs");
    // The harness clock stands still unless moved; a person's minutes pass in the browser
    // (the replay's range ends "now", after the events it replays).
    let clock = h.clock.clone();
    let ticking = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.advance(100);
        }
    });
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .args([
                script,
                &base,
                link["url"].as_str().unwrap(),
                reader["url"].as_str().unwrap(),
                &receiver.url,
                &h.key,
                &shots,
            ])
            .env("NODE_PATH", &modules)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends within 4 minutes")
    .unwrap();
    ticking.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("console ok"), "{stdout}");
    let line = |prefix: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("{prefix}in {stdout}")).to_string()
    };
    let secret = line("webhook-secret ");

    // The receiver got the test event and, twice, the user's creation: the replay carries
    // the same webhook-id, and every POST a valid signature and the custom header.
    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert!(got.iter().all(|r| crate::webhooks::verify(&secret, r)), "every POST is signed with the console's secret");
    assert!(got.iter().all(|r| r.header("x-partner") == "acme-123"), "the custom header");
    assert!(got.iter().any(|r| r.json()["type"] == "webhook.test"));
    let created: Vec<_> = got.iter().filter(|r| r.json()["type"] == "user.created").collect();
    assert_eq!(created.len(), 2, "the event and its replay: {:?}", got.iter().map(|r| r.json()).collect::<Vec<_>>());
    assert_eq!(created[0].header("webhook-id"), created[1].header("webhook-id"));
    for name in ["overview", "keys", "key-created", "delivery", "deliveries", "events", "phone-overview", "phone-keys"]
    {
        assert!(std::path::Path::new(&format!("{shots}/{name}.png")).exists(), "screenshot {name}");
    }
}

#[cfg_attr(not(cw_browser), ignore = "skipped: Chromium or playwright-core (COURSEWIRE_NODE_PATH) is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_on_sqlite() {
    drive(Backend::Sqlite).await;
}

#[cfg_attr(
    not(all(cw_browser, cw_postgres)),
    ignore = "skipped: needs Chromium and playwright-core, and COURSEWIRE_TEST_DATABASE_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_on_postgres() {
    drive(Backend::Postgres).await;
}

//! Two real `coursewire` processes sharing one database and one Redis: together they admit
//! exactly the organization's limit, not one call more.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use coursewire_proto::v1::PingRequest;
use coursewire_proto::v1::account_service_client::AccountServiceClient;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::harness::{Process, WithKey, free_port};

fn start(dir: &std::path::Path, redis: &str, limits: &str) -> (Process, u16) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .current_dir(dir)
        .env_remove("COURSEWIRE_DATABASE_URL")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--redis-url", redis, "--rate-limits", limits])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("listening"));
    assert!(ready, "the server did not start");
    std::thread::spawn(move || lines.for_each(drop));
    (Process(child), port)
}

#[cfg_attr(not(cw_redis), ignore = "skipped: COURSEWIRE_TEST_REDIS_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_redis_admit_exactly_the_limit() {
    let redis = crate::harness::service_url("COURSEWIRE_TEST_REDIS_URL");
    let dir = tempfile::tempdir().unwrap();
    // A fresh organization id, so counters left in Redis by earlier runs cannot interfere.
    let org = format!("r{}", ulid::Ulid::new().to_string().to_lowercase());
    let bin = env!("CARGO_BIN_EXE_coursewire");
    assert!(Command::new(bin).current_dir(dir.path()).args(["orgs", "create", &org]).status().unwrap().success());
    let out = Command::new(bin).current_dir(dir.path()).args(["keys", "create", "--org", &org]).output().unwrap();
    let key = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string();

    let (_a, port_a) = start(dir.path(), &redis, "300/1m");
    let (_b, port_b) = start(dir.path(), &redis, "300/1m");
    let hammer = |port: u16| {
        let key = key.clone();
        tokio::spawn(async move {
            let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
            let calls = (0..400).map(|_| {
                let mut client = AccountServiceClient::with_interceptor(
                    channel.clone(),
                    WithKey(format!("Bearer {key}").parse().unwrap()),
                );
                async move { client.ping(PingRequest {}).await.map(|_| ()).map_err(|s| s.code()) }
            });
            futures::stream::iter(calls).buffer_unordered(32).collect::<Vec<_>>().await
        })
    };
    let (a, b) = (hammer(port_a), hammer(port_b));
    let results: Vec<_> = a.await.unwrap().into_iter().chain(b.await.unwrap()).collect();
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let limited = results.iter().filter(|r| **r == Err(tonic::Code::ResourceExhausted)).count();
    assert_eq!(admitted, 300, "exactly the limit across both processes");
    assert_eq!(limited, 500);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

//! The `coursewire-dispatcher` binary's start-up checks (it also makes cargo build the binary
//! that the workspace's process tests run).
use std::process::Command;

fn dispatcher(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coursewire-dispatcher"))
        .env_remove("COURSEWIRE_AMQP_URL")
        .env_remove("COURSEWIRE_DATABASE_URL")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn needs_rabbitmq() {
    let out = dispatcher(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--amqp-url"), "{out:?}");
}

#[test]
fn bad_config_names_the_flag() {
    for (flag, value) in
        [("--webhook-retry-schedule", "5s,soon"), ("--webhook-timeout", "15"), ("--webhook-disable-after", "x")]
    {
        let out = dispatcher(&["--amqp-url", "amqp://127.0.0.1:1/%2f", flag, value]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag), "{flag}: {out:?}");
    }
}

#[test]
fn help_lists_the_flags() {
    let out = dispatcher(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in
        ["--database-url", "--amqp-url", "--amqp-queue", "--webhook-retry-schedule", "--webhook-allow-private-targets"]
    {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn metrics_default_beside_the_api() {
    // The API listens on 9464 by default; the dispatcher must not collide with it on one host.
    let out = dispatcher(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("127.0.0.1:9465"), "{text}");
}

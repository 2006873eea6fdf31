//! The README's grpcurl cookbook, run verbatim (only the port and key are filled in) against
//! the real `coursewire` binary started as a user would start it.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg_attr(not(cw_grpcurl), ignore = "skipped: grpcurl or jq is not installed")]
#[test]
fn readme_cookbook_works_verbatim() {
    assert!(have("grpcurl") && have("jq"), "grpcurl and jq are required (.ci/run installs them)");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("<!-- cookbook:start -->").nth(1).unwrap().split("<!-- cookbook:end -->").next().unwrap();
    let script = block.trim().trim_start_matches("```sh").trim_end_matches("```");

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .current_dir(dir.path())
        .env_remove("COURSEWIRE_DATABASE_URL")
        .env_remove("COURSEWIRE_AMQP_URL")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut key = None;
    let mut listening = false;
    while !(key.is_some() && listening) {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the binary prints its key and starts listening");
        if let Some(k) = line.split_whitespace().find(|w| w.starts_with("sk_") && w.len() == 51) {
            key.get_or_insert_with(|| k.to_string());
        }
        listening |= line.contains("listening");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    assert!(dir.path().join("coursewire-data/coursewire.db").exists(), "embedded default database");

    let script = script
        .replace("localhost:50051", &format!("localhost:{port}"))
        .replace("sk_paste_the_key_printed_at_first_start", &key.unwrap());
    let out = Command::new("bash").arg("-euo").arg("pipefail").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cookbook failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"state\": \"COMPLETED\""), "{stdout}");
    assert!(stdout.contains("\"secret\": \"whsec_"), "CreateWebhook shows the signing secret: {stdout}");
    assert!(
        stdout.contains(r#"{"state":"COMPLETED","progress":{"coursesCompleted":1,"coursesTotal":1,"percent":100}}"#),
        "the path enrollment reuses the completed enrollment: {stdout}"
    );
    assert!(
        stdout.contains(r#"{"done":true,"membersDone":"1"}"#),
        "the group's operation enrolled its member (reusing the path enrollment; int64 is a JSON string): {stdout}"
    );
    assert!(
        stdout.trim_end().ends_with(
            "1 enrollment.created\n2 enrollment.progressed\n3 enrollment.progressed\n4 enrollment.completed"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("coursewire.v1.EnrollmentService") && stdout.contains("grpc.health.v1.Health"));

    // Metrics are served in Prometheus text format.
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    std::io::Write::write_all(&mut socket, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut socket, &mut text).unwrap();
    assert!(
        text.contains("coursewire_events_published_total") && text.contains("coursewire_outbox_lag_seconds"),
        "{text}"
    );

    // The health probe says SERVING while the server runs, and fails once it is gone.
    let probe = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_coursewire"))
            .args(["health", "--addr", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap()
    };
    let healthy = probe(port);
    assert!(healthy.status.success(), "{healthy:?}");
    assert_eq!(String::from_utf8_lossy(&healthy.stdout).trim(), "SERVING");
    let unknown = Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .args(["health", "--addr", &format!("127.0.0.1:{port}"), "--service", "no.such.Service"])
        .output()
        .unwrap();
    assert!(!unknown.status.success(), "an unknown service is not serving: {unknown:?}");
    let nobody = probe(free_port());
    assert!(!nobody.status.success(), "nothing listens there: {nobody:?}");

    // SIGTERM shuts down cleanly.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A restart on the same database does not bootstrap a second key.
    let out = Command::new(env!("CARGO_BIN_EXE_coursewire")).current_dir(dir.path()).arg("migrate").output().unwrap();
    assert!(out.status.success());
    let keys = Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .current_dir(dir.path())
        .args(["keys", "list", "--org", "default"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&keys.stdout).lines().count(), 1);
}

fn coursewire(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .current_dir(dir)
        .env_remove("COURSEWIRE_DATABASE_URL")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_manages_orgs_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = coursewire(dir.path(), &["orgs", "create", "acme", "--name", "Acme Corp"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "acme");
    let dup = coursewire(dir.path(), &["orgs", "create", "acme"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("ORGANIZATION_EXISTS"));

    let out = coursewire(
        dir.path(),
        &[
            "keys",
            "create",
            "--org",
            "acme",
            "--label",
            "lms sync",
            "--scopes",
            "users:read,enrollments:write",
            "--allow-ip",
            "10.0.0.0/8",
            "--expires-in",
            "30d",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secret = stdout.lines().last().unwrap();
    assert!(secret.starts_with("sk_") && secret.len() == 51, "the secret alone is the last line: {stdout}");

    let list = coursewire(dir.path(), &["keys", "list", "--org", "acme"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("lms sync") && listed.contains("users:read,enrollments:write") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(secret), "secrets are never listed");
    let key_id = listed.split_whitespace().next().unwrap();
    let revoke = coursewire(dir.path(), &["keys", "revoke", "--org", "acme", key_id]);
    assert!(revoke.status.success(), "{revoke:?}");
    assert!(
        String::from_utf8_lossy(&coursewire(dir.path(), &["keys", "list", "--org", "acme"]).stdout).contains("revoked")
    );

    let bad_scope = coursewire(dir.path(), &["keys", "create", "--org", "acme", "--scopes", "everything"]);
    assert!(!bad_scope.status.success());
    assert!(String::from_utf8_lossy(&bad_scope.stderr).contains("scopes"));
    let platform = coursewire(dir.path(), &["keys", "create", "--platform", "--label", "ops"]);
    assert!(platform.status.success(), "{platform:?}");

    // Bad configuration fails at start, naming the flag.
    let bad = coursewire(dir.path(), &["migrate", "--webhook-timeout", "15"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--webhook-timeout"));
    let bad = coursewire(dir.path(), &["migrate", "--database-url", "mysql://x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--database-url"));
}

/// docs/operations.md's flag table is exactly the flags (and their environment variables) of
/// `coursewire` and `coursewire-dispatcher`, as their `--help` prints them.
#[test]
fn the_operations_guide_lists_every_flag() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let documented: std::collections::BTreeSet<(String, String)> = guide
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells[1].to_string(), cells[2].to_string())
        })
        .collect();
    let dispatcher = std::path::PathBuf::from(env!("CARGO_BIN_EXE_coursewire")).with_file_name("coursewire-dispatcher");
    let mut flags = std::collections::BTreeSet::new();
    for bin in [std::path::PathBuf::from(env!("CARGO_BIN_EXE_coursewire")), dispatcher] {
        let help = Command::new(&bin).arg("--help").output().unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        // `      --flag <VALUE>` then its description line with `[env: NAME=…]`.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(flag) = line.split_whitespace().next().filter(|f| f.starts_with("--")) else { continue };
            if flag == "--help" || flag == "--version" {
                continue;
            }
            let described = lines[i..].iter().take(3).copied().collect::<Vec<_>>().join(" ");
            let env = described.split("[env: ").nth(1).map(|e| e.split(['=', ']']).next().unwrap().to_string());
            flags.insert((flag.to_string(), env.unwrap_or_else(|| panic!("{flag} has no environment variable"))));
        }
    }
    assert!(flags.len() > 15, "{flags:?}");
    let missing: Vec<_> = flags.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&flags).collect();
    assert!(missing.is_empty() && unknown.is_empty(), "not in docs/operations.md: {missing:?}; not flags: {unknown:?}");
}

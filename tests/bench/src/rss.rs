//! Resident memory of the all-in-one binary, idle after start-up (target ≤ 40 MB).
use std::time::Duration;

use serde_json::json;

use crate::report;

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

pub async fn run() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.with_file_name("coursewire");
    anyhow::ensure!(exe.exists(), "build the binary first: cargo build --release ({} missing)", exe.display());
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = tokio::process::Command::new(&exe)
        .current_dir(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kib = rss_kib(child.id().unwrap_or_default())?;
    child.kill().await?;
    report(json!({"scenario": "idle-rss", "rss_mib": (kib as f64 / 1024.0 * 10.0).round() / 10.0, "target_mib": 40}));
    Ok(())
}

//! What the machine and the processes are doing: idle CPU (so a run on a busy machine is
//! visible as one), a process's CPU time, and Postgres' own counters for a database.
use std::time::{Duration, Instant};

/// Share of the machine's CPU that was idle over `over` (0.0–1.0).
pub async fn idle_share(over: Duration) -> f64 {
    fn times() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0); // idle + iowait
        Some((idle, cpu.iter().sum()))
    }
    let Some((idle0, total0)) = times() else { return f64::NAN };
    tokio::time::sleep(over).await;
    let Some((idle1, total1)) = times() else { return f64::NAN };
    (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Processes whose command name is `name` (`postgres`, `beam.smp`).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// How much of one core named groups of processes used between two readings.
pub struct CpuMeter {
    groups: Vec<(&'static str, Vec<u32>, f64)>,
    at: Instant,
}

impl CpuMeter {
    /// The API, the dispatcher, Postgres, RabbitMQ and this load client.
    pub fn start(api: u32, dispatcher: u32) -> CpuMeter {
        let groups = [
            ("api", vec![api]),
            ("dispatcher", vec![dispatcher]),
            ("postgres", pids_named("postgres")),
            ("rabbitmq", pids_named("beam.smp")),
            ("load_client", vec![std::process::id()]),
        ];
        let used = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).filter(|s| s.is_finite()).sum::<f64>();
        CpuMeter {
            groups: groups.into_iter().map(|(name, pids)| (name, pids.clone(), used(&pids))).collect(),
            at: Instant::now(),
        }
    }

    /// Each group's share of one core since `start`.
    pub fn shares(&self) -> serde_json::Value {
        let elapsed = self.at.elapsed().as_secs_f64();
        let used = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).filter(|s| s.is_finite()).sum::<f64>();
        self.groups
            .iter()
            .map(|(name, pids, start)| (name.to_string(), round3((used(pids) - start) / elapsed).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Postgres' counters for one database: transactions, rows written and read, and (with
/// `pg_stat_statements` loaded) statements.
#[derive(Clone, Copy, Debug, Default)]
pub struct PgCounters {
    pub transactions: i64,
    pub rows_written: i64,
    pub rows_read: i64,
    /// `None` without `pg_stat_statements` in `shared_preload_libraries`.
    pub statements: Option<i64>,
}

impl PgCounters {
    pub async fn read(admin: &sqlx::PgPool, database: &str) -> anyhow::Result<PgCounters> {
        // Statistics are sent by backends at most every 0.5 s (PG 15); let them land.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = sqlx::query("SELECT pg_stat_clear_snapshot()").execute(admin).await;
        let (transactions, rows_written, rows_read): (i64, i64, i64) = sqlx::query_as(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted, tup_returned + tup_fetched \
             FROM pg_stat_database WHERE datname = $1",
        )
        .bind(database)
        .fetch_one(admin)
        .await?;
        let statements: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(calls)::bigint FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
        )
        .bind(database)
        .fetch_one(admin)
        .await
        .ok()
        .flatten();
        Ok(PgCounters { transactions, rows_written, rows_read, statements })
    }

    /// Per unit of work (`per`) since `before`.
    pub fn per(&self, before: &PgCounters, per: f64) -> serde_json::Value {
        let d = |a: i64, b: i64| round3((a - b) as f64 / per.max(1.0));
        serde_json::json!({
            "statements": self.statements.zip(before.statements).map(|(a, b)| d(a, b)),
            "transactions": d(self.transactions, before.transactions),
            "rows_written": d(self.rows_written, before.rows_written),
            "rows_read": d(self.rows_read, before.rows_read),
        })
    }
}

//! A scratch Postgres database (and RabbitMQ names) for one benchmark run, dropped after.
use coursewire_api::clock::{Clock, SystemClock};
use coursewire_core::events::topology::Topology;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

pub struct Scratch {
    pub url: String,
    pub topology: Topology,
    /// The database's name, and the URL of the server's admin database.
    pub name: String,
    pub admin_url: String,
    admin: sqlx::PgPool,
}

impl Scratch {
    pub async fn create(scenario: &str) -> anyhow::Result<Scratch> {
        let admin_url = env_or("COURSEWIRE_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
        let amqp = env_or("COURSEWIRE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let name = format!("cw_bench_{scenario}_{}", SystemClock.now_ms());
        let admin = sqlx::PgPool::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
        let url = format!("{}/{name}", admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base));
        let topology = Topology { url: amqp, exchange: format!("{name}.events"), queue: format!("{name}.dispatcher") };
        Ok(Scratch { url, topology, name, admin_url, admin })
    }

    /// Drops the database and the exchanges and queues.
    pub async fn remove(self) {
        crate::relay::cleanup(&self.topology).await;
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&self.admin).await;
    }
}

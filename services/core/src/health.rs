//! gRPC health (`grpc.health.v1`) that tells the truth about a process's dependencies, for
//! both binaries: the overall status (`""`) and the named services follow the database (one
//! trivial query every few seconds: the idle cost of health), and `coursewire.broker`
//! follows the connection to RabbitMQ as it changes. A broker outage does not take the
//! overall status down: events wait in the outbox, retries in the database.
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::Db;

/// The service that reports the broker connection.
pub const BROKER: &str = "coursewire.broker";

const DATABASE_CHECK: Duration = Duration::from_secs(5);

fn status(up: bool) -> ServingStatus {
    if up { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// Keeps `health` current until the task is dropped: `services` (and `""`) follow the
/// database, `coursewire.broker` follows `broker`.
pub async fn follow(db: Db, mut broker: watch::Receiver<bool>, health: HealthReporter, services: &[&str]) {
    let (mut database_was, mut broker_was) = (None, None);
    loop {
        let broker_up = *broker.borrow_and_update();
        if broker_was != Some(broker_up) {
            health.set_service_status(BROKER, status(broker_up)).await;
            broker_was = Some(broker_up);
        }
        let database_up = db.is_healthy().await;
        if database_was != Some(database_up) {
            if !database_up {
                tracing::warn!("database not answering: health is NOT_SERVING");
            }
            health.set_service_status("", status(database_up)).await;
            for name in services {
                health.set_service_status(*name, status(database_up)).await;
            }
            database_was = Some(database_up);
        }
        tokio::select! {
            // (Once the sender is gone this branch is skipped: the database is still followed.)
            Ok(()) = broker.changed() => {}
            _ = tokio::time::sleep(DATABASE_CHECK) => {}
        }
    }
}

//! The core's clock, plus conversions between epoch milliseconds and protobuf timestamps.
pub use coursewire_core::clock::*;

pub fn to_timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn opt_timestamp(ms: Option<i64>) -> Option<pbjson_types::Timestamp> {
    ms.map(to_timestamp)
}

/// Timestamp to epoch ms; `None` when out of range (years 1970–9999 are accepted).
pub fn from_timestamp(t: &pbjson_types::Timestamp) -> Option<i64> {
    if !(0..=253_402_300_799).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

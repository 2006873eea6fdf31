//! The contracts between processes, each written once: what the API's relay puts on a
//! RabbitMQ message and the dispatcher reads off it (the headers, and the event envelope that
//! is its body), and the form of a webhook signing secret, which the API makes and the
//! dispatcher signs with. Changing anything here changes what running processes of another
//! version understand: add, never rename.
use std::borrow::Cow;

/// The headers the relay sets on each message (`services/api/src/events/amqp.rs`) and the
/// dispatcher's intake reads (`dispatcher/src/intake.rs`).
pub mod headers {
    /// The event's organization (a long string).
    pub const ORGANIZATION_ID: &str = "organization_id";
    /// The organization's `webhooks_version` read after the event committed (a long-long
    /// int): a dispatcher whose endpoint cache is at least this recent needs not look.
    pub const WEBHOOKS_VERSION: &str = "webhooks_version";
    /// The span of the call that wrote the event, W3C Trace Context (a long string).
    pub const TRACEPARENT: &str = "traceparent";
    /// Set (a boolean, true) when the event may have been published before (a relay that
    /// took over, or retried after a failed confirm): dispatchers check it against the
    /// deliveries already written instead of sending it as new.
    pub const RESENT: &str = "resent";
}

/// The event envelope (docs/architecture.md §4): the body of every message and of every webhook POST,
/// stored in the event log exactly as written (`events::record`), so every consumer sees the
/// same bytes. Its fields are written in this order. `D` is the event's data: the resource
/// as a `&T: Serialize` when writing, `serde::de::IgnoredAny` when only the head is read.
/// Reading needs only the head (id, type, organization): the other fields default when absent.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
pub struct Envelope<'a, D> {
    pub id: Cow<'a, str>,
    #[serde(rename = "type")]
    pub kind: Cow<'a, str>,
    /// RFC 3339, UTC, milliseconds.
    #[serde(default)]
    pub created_at: Cow<'a, str>,
    pub organization_id: Cow<'a, str>,
    /// The resource's sequence after the change.
    #[serde(default)]
    pub sequence: i64,
    #[serde(default)]
    pub data: D,
}

/// What a webhook signing secret starts with (Standard Webhooks): `whsec_` + base64 of the key.
pub const SECRET_PREFIX: &str = "whsec_";

#[cfg(test)]
mod tests {
    use serde::de::IgnoredAny;

    use super::*;

    #[derive(serde::Serialize)]
    struct Data {
        name: &'static str,
    }

    /// The bytes written are the documented envelope, field for field and in order, and the
    /// dispatcher reads back what was written.
    #[test]
    fn the_envelope_round_trips() {
        let data = Data { name: "Ada \"Lovelace\"" };
        let written = Envelope {
            id: "evt_01".into(),
            kind: "user.created".into(),
            created_at: "2026-01-02T03:04:05.678Z".into(),
            organization_id: "acme".into(),
            sequence: 3,
            data: &data,
        };
        let body = serde_json::to_string(&written).unwrap();
        assert_eq!(
            body,
            r#"{"id":"evt_01","type":"user.created","created_at":"2026-01-02T03:04:05.678Z","organization_id":"acme","sequence":3,"data":{"name":"Ada \"Lovelace\""}}"#
        );
        let read: Envelope<IgnoredAny> = serde_json::from_str(&body).unwrap();
        assert_eq!((&*read.id, &*read.kind, &*read.organization_id), ("evt_01", "user.created", "acme"));
        assert_eq!((&*read.created_at, read.sequence), ("2026-01-02T03:04:05.678Z", 3));
    }

    /// A message is an event of ours when it has the head; anything else is not (intake sends
    /// it to the dead-letter queue).
    #[test]
    fn reading_needs_the_head_only() {
        let head: Envelope<IgnoredAny> =
            serde_json::from_str(r#"{"id":"evt_1","type":"x.y","organization_id":"o"}"#).unwrap();
        assert_eq!((&*head.id, head.sequence), ("evt_1", 0));
        for not_ours in [r#"{"id":"evt_1","type":"x.y"}"#, r#"{"hello":1}"#, "[]", "not json"] {
            assert!(serde_json::from_str::<Envelope<IgnoredAny>>(not_ours).is_err(), "{not_ours}");
        }
    }
}

//! The event catalogue: every event type with when it is emitted, its routing key, its
//! payload's JSON Schema and an example envelope. Built from the one text people read
//! (docs/events.md's type table, compiled in; a core test keeps it equal to `EVENT_TYPES`)
//! and the payload messages' own descriptors, so the catalogue cannot drift from either.
//! Served by `ListEventTypes` (`GET /v1/eventTypes`) and the console's `/console/events`.
use std::sync::LazyLock;

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::layers::gateway::routes;
use coursewire_core::events::EVENT_TYPES;

const DOC: &str = include_str!("../../../../docs/events.md");

pub struct EventType {
    /// Also the routing key on the exchange.
    pub name: String,
    /// What the payload (`data`) is, as docs/events.md says it.
    pub payload: String,
    /// When it is emitted.
    pub when: String,
    /// JSON Schema of `data`.
    pub data_schema: Value,
    /// A whole envelope, as posted to webhooks and published to RabbitMQ.
    pub example: Value,
}

pub fn catalogue() -> &'static [EventType] {
    static CATALOGUE: LazyLock<Vec<EventType>> = LazyLock::new(build);
    &CATALOGUE
}

fn build() -> Vec<EventType> {
    let pool = routes::pool();
    let mut out = Vec::new();
    for row in coursewire_core::doc_tables::rows(DOC, "## Event types and payloads") {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (types, payload, when) = (cells[1], cells[2], cells[3]);
        // The payload cell starts with the message's name (`Enrollment` (with …)) or, for
        // the two events of our own, the object's fields (`{"webhook_id", "message"}`).
        let message = payload
            .strip_prefix('`')
            .and_then(|p| p.split('`').next())
            .and_then(|name| pool.get_message_by_name(&format!("coursewire.v1.{name}")));
        let data_schema = match &message {
            Some(m) => schema(m, 0),
            None => fields_schema(payload),
        };
        for name in types.split(',').map(|t| t.trim().trim_matches('`')) {
            let data = match &message {
                Some(m) => example(m, 0),
                None => example_of_fields(&data_schema),
            };
            let example = json!({
                "id": "evt_01jd3k5q9y8m2c4v6b7n0p1r2s",
                "type": name,
                "created_at": "2026-12-02T09:30:00.000Z",
                "organization_id": "acme",
                "sequence": 1,
                "data": data,
            });
            out.push(EventType {
                name: name.to_string(),
                payload: payload.replace('`', ""),
                when: when.replace('`', ""),
                data_schema: data_schema.clone(),
                example,
            });
        }
    }
    debug_assert_eq!(out.len(), EVENT_TYPES.len());
    out
}

/// JSON Schema of a message in proto3 JSON with proto field names (what `data` holds).
fn schema(m: &MessageDescriptor, depth: usize) -> Value {
    let mut properties = Map::new();
    for f in m.fields() {
        let one = match f.kind() {
            Kind::Message(inner) if inner.full_name() == "google.protobuf.Timestamp" => {
                json!({"type": "string", "format": "date-time"})
            }
            Kind::Message(inner) if inner.full_name().starts_with("google.protobuf.") => json!({}),
            Kind::Message(inner) if depth < 3 => schema(&inner, depth + 1),
            Kind::Message(_) => json!({"type": "object"}),
            Kind::Enum(e) => {
                json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "pattern": "^-?[0-9]+$", "description": "a 64-bit integer, as a string"})
            }
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer"}),
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        };
        let one = if f.is_map() {
            json!({"type": "object", "additionalProperties": {"type": "string"}})
        } else if f.is_list() {
            json!({"type": "array", "items": one})
        } else {
            one
        };
        properties.insert(f.name().to_string(), one);
    }
    json!({"type": "object", "title": m.name(), "properties": properties})
}

/// `{"webhook_id", "message"}` or `{id, url, reason, disabled_at}`: an object of those fields.
fn fields_schema(payload: &str) -> Value {
    let inside = payload.split('{').nth(1).and_then(|p| p.split('}').next()).unwrap_or_default();
    let properties: Map<String, Value> = inside
        .split(',')
        .map(|f| f.trim().trim_matches(['"', '`']).to_string())
        .filter(|f| !f.is_empty())
        .map(|f| {
            let kind = if f.ends_with("_at") {
                json!({"type": "string", "format": "date-time"})
            } else {
                json!({"type": "string"})
            };
            (f, kind)
        })
        .collect();
    json!({"type": "object", "properties": properties})
}

/// An example value of a message: every field set to something plausible.
fn example(m: &MessageDescriptor, depth: usize) -> Value {
    let mut out = Map::new();
    for f in m.fields() {
        let one = match f.kind() {
            Kind::Message(inner) if inner.full_name() == "google.protobuf.Timestamp" => {
                json!("2026-12-02T09:30:00.000Z")
            }
            Kind::Message(inner) if inner.full_name().starts_with("google.protobuf.") => json!({}),
            Kind::Message(inner) if depth < 3 => example(&inner, depth + 1),
            Kind::Message(_) => json!({}),
            Kind::Enum(e) => json!(e.values().nth(1).or_else(|| e.values().next()).map(|v| v.name().to_string())),
            Kind::Bool => json!(false),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => json!("1"),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => json!(1),
            Kind::Double | Kind::Float => json!(1.0),
            Kind::String => json!(sample_string(f.name(), m.name())),
            Kind::Bytes => json!(""),
        };
        let one = if f.is_map() {
            json!({})
        } else if f.is_list() {
            json!([one])
        } else {
            one
        };
        out.insert(f.name().to_string(), one);
    }
    Value::Object(out)
}

fn example_of_fields(schema: &Value) -> Value {
    let props = schema["properties"].as_object().cloned().unwrap_or_default();
    Value::Object(
        props
            .into_iter()
            .map(|(name, s)| {
                let v = if s["format"] == "date-time" {
                    json!("2026-12-02T09:30:00.000Z")
                } else {
                    json!(sample_string(&name, ""))
                };
                (name, v)
            })
            .collect(),
    )
}

/// A string that looks like what the field holds: ids with their kind's prefix.
fn sample_string(field: &str, message: &str) -> String {
    use coursewire_core::ids::kind;
    let id = |prefix: &str| format!("{prefix}_01jd3k5q9y8m2c4v6b7n0p1r2s");
    match field {
        "id" => id(match message {
            "User" => kind::USER,
            "Domain" => kind::DOMAIN,
            "DomainUser" => kind::DOMAIN_USER,
            "Course" => kind::COURSE,
            "Lesson" => kind::LESSON,
            "PublishedCourse" => kind::PUBLISHED_COURSE,
            "Enrollment" => kind::ENROLLMENT,
            "LearningPath" => kind::LEARNING_PATH,
            "PathEnrollment" => kind::PATH_ENROLLMENT,
            "Group" => kind::GROUP,
            "GroupMembership" => kind::GROUP_MEMBER,
            "Operation" => kind::OPERATION,
            _ => kind::WEBHOOK,
        }),
        "user_id" => id(kind::USER),
        "domain_id" => id(kind::DOMAIN),
        "course_id" => id(kind::COURSE),
        "lesson_id" => id(kind::LESSON),
        "published_course_id" => id(kind::PUBLISHED_COURSE),
        "enrollment_id" => id(kind::ENROLLMENT),
        "learning_path_id" => id(kind::LEARNING_PATH),
        "group_id" => id(kind::GROUP),
        "webhook_id" => id(kind::WEBHOOK),
        "email" => "ada@example.com".into(),
        "hostname" => "learn.example.com".into(),
        "url" => "https://example.com/webhooks".into(),
        "etag" => "W/\"1\"".into(),
        _ => format!("…{field}…"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_event_type_is_in_the_catalogue_with_a_schema_and_an_example() {
        let catalogue = super::catalogue();
        let names: Vec<&str> = catalogue.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), coursewire_core::events::EVENT_TYPES.len());
        for t in coursewire_core::events::EVENT_TYPES {
            let entry =
                catalogue.iter().find(|e| e.name == *t).unwrap_or_else(|| panic!("{t} is not in the catalogue"));
            let properties = entry.data_schema["properties"].as_object().expect("an object schema");
            assert!(!properties.is_empty(), "{t}: the payload schema names no field");
            assert_eq!(entry.example["type"], *t);
            for field in entry.example["data"].as_object().expect("data is an object").keys() {
                assert!(properties.contains_key(field), "{t}: the example's {field} is not in the schema");
            }
        }
        let enrollment = catalogue.iter().find(|e| e.name == "enrollment.completed").unwrap();
        assert_eq!(enrollment.data_schema["title"], "Enrollment");
        assert_eq!(enrollment.example["data"]["id"].as_str().map(|s| &s[..4]), Some("enr_"));
    }
}

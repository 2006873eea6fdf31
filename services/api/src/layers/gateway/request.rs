//! HTTP request → protobuf request message, by the proto3 JSON mapping: the body fills the
//! field the rule names (or the whole request for `*`), path variables and query parameters
//! fill the rest. Everything is gathered into one JSON object and decoded once, so every
//! field type (enums by name, timestamps, field masks, 64-bit integers as strings) is read
//! the same way wherever it comes from.
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::routes::{Route, field_path};
use coursewire_core::error::{ApiError, ApiResult, Reason};

/// The encoded request message for `route`.
pub fn encode(route: &Route, bindings: Vec<(String, String)>, query: Option<&str>, body: &[u8]) -> ApiResult<Vec<u8>> {
    let input = route.method.input();
    let mut request = Map::new();
    let body = parse_body(body)?;
    // `application/x-www-form-urlencoded` pairs (`+` is a space), as browsers and curl send them.
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let field = field_path(&input, &name).ok_or_else(|| {
            ApiError::field(&name, format!("`{}` has no field `{name}` for a query parameter", route.template))
        })?;
        set(&mut request, &name, query_value(&field, &value, &name)?, field.is_list())?;
    }
    let mask_given = request.contains_key("update_mask");
    match (route.body.as_str(), body) {
        (_, None) => {}
        ("*", Some(Value::Object(fields))) => {
            for (name, value) in fields {
                request.insert(name, value);
            }
        }
        ("*", Some(_)) => return Err(malformed("the body must be a JSON object")),
        ("", Some(_)) => {
            return Err(malformed(&format!(
                "{} {} takes no body; send fields as query parameters",
                route.verb, route.template
            )));
        }
        (field, Some(value)) => {
            // AIP-134: a PATCH without `update_mask` changes the fields the body holds
            // (not the id the path names, nor the etag that guards the update).
            if !mask_given && let (Some(mask), Value::Object(fields)) = (input.get_field_by_name("update_mask"), &value)
            {
                let resource = input.get_field_by_name(field).and_then(|f| f.kind().as_message().cloned());
                if let Some(resource) = resource.filter(|_| is_field_mask(&mask)) {
                    let bound: Vec<&str> =
                        route.variables().filter_map(|v| v.strip_prefix(field)?.strip_prefix('.')).collect();
                    let paths: Vec<String> = fields
                        .keys()
                        .map(|k| proto_name(&resource, k))
                        .filter(|k| k != "etag" && !bound.contains(&k.as_str()))
                        .collect();
                    request.insert("update_mask".into(), Value::String(mask_json(&paths.join(","))));
                }
            }
            request.insert(field.to_string(), value);
        }
    }
    for (name, value) in bindings {
        let field = field_path(&input, &name).expect("checked when the routes were read");
        let value = query_value(&field, &value, &name)?;
        match lookup(&request, &name) {
            Some(existing) if *existing == value => {}
            Some(existing) => {
                return Err(ApiError::field(&name, format!("the path says {value} but the body says {existing}")));
            }
            None => set(&mut request, &name, value, false)?,
        }
    }
    let message = decode(input, Value::Object(request))?;
    Ok(message.encode_to_vec())
}

fn parse_body(body: &[u8]) -> ApiResult<Option<Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| malformed(&format!("the body is not JSON: {e}")))
}

fn decode(input: MessageDescriptor, request: Value) -> ApiResult<DynamicMessage> {
    DynamicMessage::deserialize_with_options(input, request, &DeserializeOptions::new().deny_unknown_fields(true))
        .map_err(|e| malformed(&format!("the request does not match its schema: {e}")))
}

fn malformed(message: &str) -> ApiError {
    ApiError::new(Reason::MalformedRequest, message.to_string())
        .help("see /openapi.json for each method's fields; JSON names are the proto field names")
}

/// A query string or path value as the JSON the field expects: booleans and numbers as
/// such, everything else (enum names, timestamps, masks, 64-bit integers) as strings.
fn query_value(field: &FieldDescriptor, value: &str, name: &str) -> ApiResult<Value> {
    let bad = |what: &str| ApiError::field(name, format!("`{value}` is not {what}"));
    Ok(match field.kind() {
        Kind::Bool => Value::Bool(value.parse().map_err(|_| bad("true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            Value::Number(value.parse::<i64>().map_err(|_| bad("a whole number"))?.into())
        }
        Kind::Message(m) if m.full_name() == FIELD_MASK => Value::String(mask_json(value)),
        Kind::Message(m) if !settable_from_query(&m) => {
            return Err(ApiError::field(
                name,
                "a message field cannot be set from the query string; send it in the body",
            ));
        }
        _ => Value::String(value.to_string()),
    })
}

const FIELD_MASK: &str = "google.protobuf.FieldMask";

/// Message fields a query parameter can set: well-known types whose JSON form is a string
/// (or a number given as one). The OpenAPI document lists exactly these as parameters.
pub(super) fn settable_from_query(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | FIELD_MASK
            | "google.protobuf.StringValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
    )
}

/// A field mask as proto3 JSON writes it (`first_name` → `firstName`); people and our docs
/// write the proto names, which JSON parsers refuse.
fn mask_json(paths: &str) -> String {
    let mut out = String::with_capacity(paths.len());
    let mut upper = false;
    for c in paths.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

fn is_field_mask(field: &FieldDescriptor) -> bool {
    field.kind().as_message().is_some_and(|m| m.full_name() == FIELD_MASK)
}

/// A body key (proto or JSON name) as the proto field name update masks use.
fn proto_name(message: &MessageDescriptor, key: &str) -> String {
    match message.get_field_by_name(key).or_else(|| message.get_field_by_json_name(key)) {
        Some(f) => f.name().to_string(),
        None => key.to_string(),
    }
}

/// Sets `a.b.c` in `object`; repeated fields collect every value given.
fn set(object: &mut Map<String, Value>, path: &str, value: Value, repeated: bool) -> ApiResult<()> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    match rest {
        Some(rest) => match object.entry(head).or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(inner) => set(inner, rest, value, repeated),
            _ => Err(ApiError::field(path, "set both as a value and as a message")),
        },
        None if repeated => match object.entry(head).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(values) => {
                values.push(value);
                Ok(())
            }
            _ => Err(ApiError::field(path, "given twice")),
        },
        None => {
            if object.insert(head.to_string(), value).is_some() {
                return Err(ApiError::field(path, "given twice"));
            }
            Ok(())
        }
    }
}

fn lookup<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = object.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gateway::routes::{Matched, Routes};

    fn encode_for(verb: http::Method, path: &str, query: Option<&str>, body: &str) -> ApiResult<DynamicMessage> {
        let routes = Routes::from_pool(&crate::layers::gateway::routes::pool()).unwrap();
        let Matched::Route(route, bindings) = routes.find(&verb, path) else { panic!("no route for {path}") };
        let bytes = encode(route, bindings, query, body.as_bytes())?;
        Ok(DynamicMessage::decode(route.method.input(), bytes.as_slice()).unwrap())
    }

    fn json(message: &DynamicMessage) -> Value {
        serde_json::to_value(message).unwrap()
    }

    #[test]
    fn path_query_and_body_fill_one_request() {
        let m = encode_for(http::Method::GET, "/v1/enrollments", Some("state=COMPLETED&page_size=5&user_id=usr_1"), "")
            .unwrap();
        assert_eq!(json(&m), serde_json::json!({"pageSize": 5, "userId": "usr_1", "state": "COMPLETED"}));
        let m = encode_for(http::Method::POST, "/v1/enrollments/enr_1:complete", None, r#"{"score": 0.5}"#).unwrap();
        assert_eq!(json(&m), serde_json::json!({"id": "enr_1", "score": 0.5}));
        let m = encode_for(http::Method::GET, "/v1/events", Some("types=user.created&types=user.deleted"), "").unwrap();
        assert_eq!(json(&m)["types"], serde_json::json!(["user.created", "user.deleted"]));
    }

    #[test]
    fn a_patch_without_a_mask_updates_what_the_body_holds() {
        let m = encode_for(http::Method::PATCH, "/v1/users/usr_1", None, r#"{"firstName": "Ada", "last_name": "L"}"#)
            .unwrap();
        assert_eq!(
            json(&m),
            serde_json::json!({"user": {"id": "usr_1", "firstName": "Ada", "lastName": "L"}, "updateMask": "firstName,lastName"})
        );
        let m = encode_for(
            http::Method::PATCH,
            "/v1/users/usr_1",
            None,
            r#"{"id": "usr_1", "etag": "e1", "email": "a@b.c"}"#,
        )
        .unwrap();
        assert_eq!(json(&m)["updateMask"], "email", "neither the id nor the etag is updated");
        let m = encode_for(
            http::Method::PATCH,
            "/v1/users/usr_1",
            Some("update_mask=external_id"),
            r#"{"email": "a@b.c"}"#,
        )
        .unwrap();
        assert_eq!(json(&m)["updateMask"], "externalId", "the mask given wins");
    }

    #[test]
    fn masks_take_proto_names() {
        assert_eq!(mask_json("first_name,external_id,email"), "firstName,externalId,email");
        assert_eq!(mask_json("firstName"), "firstName");
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = encode_for(http::Method::GET, "/v1/users", Some("page_size=ten"), "").unwrap_err();
        assert_eq!(e.details.violations[0].0, "page_size");
        let e = encode_for(http::Method::GET, "/v1/users", Some("colour=red"), "").unwrap_err();
        assert_eq!(e.details.violations[0].0, "colour");
        let e = encode_for(http::Method::POST, "/v1/users", None, r#"{"emial": "x"}"#).unwrap_err();
        assert_eq!(e.reason, Reason::MalformedRequest);
        assert!(e.message.contains("emial"), "{}", e.message);
        let e =
            encode_for(http::Method::POST, "/v1/enrollments/enr_1:complete", None, r#"{"id": "enr_2"}"#).unwrap_err();
        assert_eq!(e.details.violations[0].0, "id");
        let e = encode_for(http::Method::GET, "/v1/users/usr_1", None, "{}").unwrap_err();
        assert_eq!(e.reason, Reason::MalformedRequest);
    }
}

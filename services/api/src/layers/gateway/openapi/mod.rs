//! The OpenAPI 3 document of the HTTP/JSON API, generated from the same descriptor set and
//! `google.api.http` rules the gateway routes by (so it cannot drift from what is served),
//! with the protos' comments as descriptions. Postman, BI tools and `/docs` read it.
use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

mod errors;

use super::request::settable_from_query;
use super::routes::{Route, Routes, field_path};

/// The document, built once at start.
pub fn document(routes: &Routes) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes.iter() {
        let (path, operation) = operation(route, &mut schemas);
        paths.entry(path).or_default().insert(route.verb.as_str().to_ascii_lowercase(), operation);
    }
    let mut components = schemas.0;
    components.insert("Error".into(), error_schema());
    let (responses, headers) = errors::components();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Coursewire API",
            "version": "v1",
            "description": "Domains, users, courses, enrollments and webhooks over HTTP/JSON: the same methods, \
                auth, limits and errors as the gRPC API (`coursewire.v1`). Authenticate with an API key as the \
                Basic user name and an empty password (`curl --user sk_…:`), as a Bearer token, or in `x-api-key`. \
                Field names are the proto field names; 64-bit integers are JSON strings; timestamps are RFC 3339.",
        },
        "servers": [{"url": "/"}],
        "security": [{"basicAuth": []}, {"bearerAuth": []}, {"apiKey": []}],
        "tags": tags(routes),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic", "description": "The API key as the user name, an empty password."},
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "`authorization: Bearer sk_…`"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": components,
            "responses": responses,
            "headers": headers,
        },
    })
}

fn tags(routes: &Routes) -> Vec<Value> {
    let mut services: BTreeMap<String, Option<String>> = BTreeMap::new();
    for route in routes.iter() {
        let service = route.method.parent_service();
        services.entry(service.name().to_string()).or_insert_with(|| comment(&service.parent_file(), service.path()));
    }
    services
        .into_iter()
        .map(|(name, description)| match description {
            Some(d) => json!({"name": name, "description": d}),
            None => json!({"name": name}),
        })
        .collect()
}

fn operation(route: &Route, schemas: &mut Schemas) -> (String, Value) {
    let input = route.method.input();
    let mut path = route.template.clone();
    let mut parameters = Vec::new();
    let bound: Vec<&str> = route.variables().collect();
    for variable in &bound {
        // `{user.id}` is shown as `{id}`: OpenAPI forbids two templates for one path
        // (`/v1/users/{id}` and `/v1/users/{user.id}`).
        let name = variable.rsplit('.').next().expect("split yields one item");
        path = path.replace(&format!("{{{variable}}}"), &format!("{{{name}}}"));
        let field = field_path(&input, variable).expect("checked when the routes were read");
        parameters.push(parameter(name, "path", &field, schemas, true));
    }
    if route.body != "*" {
        for field in input.fields() {
            let name = field.name();
            let in_path = bound.iter().any(|v| *v == name || v.starts_with(&format!("{name}.")));
            if name == route.body || in_path || matches!(field.kind(), Kind::Message(m) if !settable_from_query(&m)) {
                continue;
            }
            parameters.push(parameter(name, "query", &field, schemas, false));
        }
    }
    if super::csv::serves(route) {
        parameters.extend(csv_parameters());
    }
    let mut op = Map::new();
    op.insert("operationId".into(), json!(route.method.name()));
    op.insert("tags".into(), json!([route.method.parent_service().name()]));
    op.insert("summary".into(), json!(summary(route)));
    if let Some(description) = comment(&route.method.parent_file(), route.method.path()) {
        op.insert("description".into(), json!(description));
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), json!(parameters));
    }
    let body_schema = match route.body.as_str() {
        "" => None,
        "*" => Some(schemas.reference(&input)),
        field => input.get_field_by_name(field).map(|f| schemas.field(&f)),
    };
    if let Some(schema) = body_schema {
        op.insert("requestBody".into(), json!({"required": true, "content": {"application/json": {"schema": schema}}}));
    }
    let output = schemas.reference(&route.method.output());
    let mut ok = if route.server_streaming() {
        json!({
            "description": "A stream of newline-delimited JSON objects, one per message; a failure after the first \
                line ends the stream with one `{\"error\": …}` line.",
            "content": {"application/x-ndjson": {"schema": output}},
        })
    } else {
        json!({"description": "OK", "content": {"application/json": {"schema": output}}})
    };
    if super::csv::serves(route) {
        ok["content"]["text/csv"] = json!({
            "schema": {"type": "string", "description": "Every row, with a header row of the item's field names \
                (docs/api.md, \"CSV\")."},
        });
    }
    ok["headers"] = errors::success_headers();
    op.insert("responses".into(), errors::responses(route, ok));
    (path, Value::Object(op))
}

/// `alt` and `excel`: CSV for tools that cannot send `Accept: text/csv`.
fn csv_parameters() -> [Value; 2] {
    [
        json!({"name": "alt", "in": "query", "required": false,
            "description": "`csv`: answer every row as CSV (as `Accept: text/csv` does).",
            "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"}}),
        json!({"name": "excel", "in": "query", "required": false,
            "description": "With CSV: start with the UTF-8 byte-order mark Excel needs.",
            "schema": {"type": "boolean", "default": false}}),
    ]
}

fn summary(route: &Route) -> String {
    // `CreateUser` → `Create user`.
    let mut out = String::new();
    for (i, c) in route.method.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn parameter(name: &str, location: &str, field: &FieldDescriptor, schemas: &mut Schemas, required: bool) -> Value {
    let mut p = json!({"name": name, "in": location, "required": required, "schema": schemas.field(field)});
    if let Some(d) = comment(&field.parent_file(), field.path()) {
        p["description"] = json!(d);
    }
    if field.is_list() {
        // `?types=a&types=b`
        p["style"] = json!("form");
        p["explode"] = json!(true);
    }
    p
}

/// Message schemas by full name, filled as they are referenced.
#[derive(Default)]
struct Schemas(Map<String, Value>);

impl Schemas {
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        let name = message.full_name().to_string();
        if !self.0.contains_key(&name) {
            // Insert first: messages may refer to themselves.
            self.0.insert(name.clone(), Value::Null);
            let mut properties = Map::new();
            for field in message.fields() {
                let mut schema = self.field(&field);
                if let Some(d) = comment(&field.parent_file(), field.path()) {
                    // A `$ref` cannot have siblings in OpenAPI 3.0: wrap it.
                    schema = match schema.get("$ref") {
                        Some(_) => json!({"allOf": [schema], "description": d}),
                        None => {
                            schema["description"] = json!(d);
                            schema
                        }
                    };
                }
                properties.insert(field.name().to_string(), schema);
            }
            let mut schema = json!({"type": "object", "properties": properties});
            if let Some(d) = comment(&message.parent_file(), message.path()) {
                schema["description"] = json!(d);
            }
            self.0.insert(name.clone(), schema);
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { unreachable!("map fields are entry messages") };
            let value = entry.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": self.single(&value)});
        }
        let single = self.single(field);
        if field.is_list() { json!({"type": "array", "items": single}) } else { single }
    }

    fn single(&mut self, field: &FieldDescriptor) -> Value {
        match field.kind() {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
            // proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose precision).
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
            }
            Kind::Message(m) => self.reference(&m),
        }
    }
}

/// The JSON forms proto3 gives the well-known types.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string", "example": "1.5s"}),
        "google.protobuf.FieldMask" => json!({"type": "string", "description": "Comma-separated field paths."}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": true})
        }
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({"type": "string", "format": "int64"}),
        _ => return None,
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "Google's JSON error shape. `details` holds `google.rpc.ErrorInfo` (its `reason` is the stable \
            name to switch on; see docs/api.md), and where they apply `BadRequest` (`field_violations`), \
            `RetryInfo`, `QuotaFailure` and `Help`, each with its `@type`.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "status": {"type": "string", "description": "The gRPC status name, e.g. `NOT_FOUND`."},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}}},
                },
            },
        },
    })
}

/// The leading comment of the element at `path`, as written in the proto.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
}

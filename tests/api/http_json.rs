//! HTTP/JSON on the gRPC port, as curl, Postman or a BI tool call it: the paths of the
//! `google.api.http` rules, proto3 JSON, the same keys (`curl --user sk_…:` included), the
//! same limits and headers, and errors as JSON with HTTP statuses and the same reasons.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost_reflect::{DescriptorPool, Value as Field};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::*;
use crate::harness::{Backend, Harness, Limits, http};

/// A call's status, headers and JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Answer {
    /// The `ErrorInfo.reason` of an error answer.
    fn reason(&self) -> &str {
        self.json["error"]["details"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"))
            .and_then(|i| i["reason"].as_str())
            .unwrap_or_else(|| panic!("no ErrorInfo in {}", self.json))
    }

    fn violations(&self) -> Vec<String> {
        let details = self.json["error"]["details"].as_array().cloned().unwrap_or_default();
        let bad = details.iter().find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest");
        bad.map(|b| {
            b["field_violations"].as_array().unwrap().iter().map(|v| v["field"].as_str().unwrap().to_string()).collect()
        })
        .unwrap_or_default()
    }
}

/// `verb path` with the key as a Basic user name, as `curl --user sk_…:` sends it.
async fn call(h: &Harness, key: &str, verb: Method, path: &str, body: Option<Value>) -> Answer {
    let mut req = http().request(verb, format!("http://{}{path}", h.addr())).basic_auth(key, Some(""));
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body.to_string());
    }
    answer(req).await
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let response = req.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    Answer { status, headers, json }
}

/// Every method of `coursewire.v1`, from the descriptor set the server serves.
fn coursewire_methods() -> Vec<prost_reflect::MethodDescriptor> {
    let pool = DescriptorPool::decode(coursewire_proto::FILE_DESCRIPTOR_SET).unwrap();
    pool.services()
        .filter(|s| s.package_name() == "coursewire.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect()
}

#[test]
fn every_rpc_has_an_http_rule() {
    let methods = coursewire_methods();
    let rule = methods[0]
        .parent_pool()
        .get_extension_by_name("google.api.http")
        .expect("google.api.http is in the descriptor set");
    for method in &methods {
        assert!(method.options().has_extension(&rule), "{} has no google.api.http rule", method.full_name());
        let options = method.options();
        let rule = options.get_extension(&rule);
        let Field::Message(rule) = rule.as_ref() else { panic!() };
        assert!(
            ["get", "post", "patch", "delete", "put"].iter().any(|v| rule.has_field_by_name(v)),
            "{}: the rule names no verb",
            method.full_name()
        );
    }
    assert!(methods.len() > 80, "only {} methods found", methods.len());
}

async fn each_auth_form_reaches_ping(h: &Harness) {
    let url = format!("http://{}/v1/ping", h.addr());
    let basic = format!("Basic {}", STANDARD.encode(format!("{}:", h.key)));
    for (name, value) in [
        ("authorization", basic.as_str()),
        ("authorization", &format!("Bearer {}", h.key)),
        ("x-api-key", h.key.as_str()),
    ] {
        let a = answer(http().get(&url).header(name, value)).await;
        assert_eq!((a.status, &a.json), (StatusCode::OK, &json!({})), "{name}: {value}");
        assert!(a.headers["x-request-id"].to_str().unwrap().starts_with("req_"));
        assert!(a.headers.contains_key("x-ratelimit-remaining"), "{:?}", a.headers);
        assert!(a.headers["content-type"].to_str().unwrap().starts_with("application/json"));
    }
    let a = call(h, &h.key, Method::GET, "/v1/ping", None).await;
    assert_eq!(a.status, StatusCode::OK, "curl --user key: ({})", a.json);

    let a = answer(http().get(&url)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.reason(), "MISSING_CREDENTIALS");
    assert_eq!(a.json["error"]["status"], "UNAUTHENTICATED");
    assert!(a.headers["www-authenticate"].to_str().unwrap().starts_with("Basic"), "browsers prompt for the key");
    let a = answer(http().get(&url).basic_auth(&h.key, Some("password"))).await;
    assert_eq!((a.status, a.reason()), (StatusCode::UNAUTHORIZED, "MALFORMED_CREDENTIALS"));
    let revoked_looking = format!("sk_{}", "0".repeat(48));
    let a = call(h, &revoked_looking, Method::GET, "/v1/ping", None).await;
    assert_eq!((a.status, a.reason()), (StatusCode::UNAUTHORIZED, "KEY_UNKNOWN"));

    // A key without the scope a method needs: 403, nothing written.
    let reader = h.scoped_key(&["users:read"]).await;
    let a = call(h, &reader, Method::POST, "/v1/users", Some(json!({"email": "x@example.com"}))).await;
    assert_eq!((a.status, a.reason()), (StatusCode::FORBIDDEN, "SCOPE_MISSING"));
    assert_eq!(h.count("users").await, 0);
}

async fn users_are_created_read_listed_updated_and_deleted(h: &Harness) {
    let k = &h.key;
    let a = call(h, k, Method::POST, "/v1/users", Some(json!({"email": "ada@example.com", "first_name": "Ada"}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let id = a.json["id"].as_str().unwrap().to_string();
    assert_eq!(a.json["active"], true);
    assert_eq!(a.json["last_name"], "", "defaults are written out, so reports have stable columns");

    let a = call(h, k, Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!((a.status, a.json["email"].as_str()), (StatusCode::OK, Some("ada@example.com")));
    let a = call(h, k, Method::GET, "/v1/users?email=ADA%40example.com&page_size=10", None).await;
    assert_eq!(a.json["users"].as_array().unwrap().len(), 1, "{}", a.json);
    let a = call(h, k, Method::GET, "/v1/users:lookup?email=ada@example.com", None).await;
    assert_eq!(a.json["id"], id.as_str());

    // PATCH without update_mask changes the fields the body holds (AIP-134), and only those.
    let a = call(h, k, Method::PATCH, &format!("/v1/users/{id}"), Some(json!({"last_name": "Lovelace"}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!((a.json["first_name"].as_str(), a.json["last_name"].as_str()), (Some("Ada"), Some("Lovelace")));
    let etag = a.json["etag"].as_str().unwrap().to_string();

    // A stale etag is 409; the current one deletes.
    let a = call(h, k, Method::DELETE, &format!("/v1/users/{id}?etag=stale"), None).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    let a = call(h, k, Method::DELETE, &format!("/v1/users/{id}?etag={etag}"), None).await;
    assert_eq!((a.status, &a.json), (StatusCode::OK, &json!({})));
    let a = call(h, k, Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!((a.status, a.reason()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    assert_eq!(a.json["error"]["details"][0]["metadata"]["resource_id"], id.as_str());
}

async fn bad_input_and_other_organizations_are_refused(h: &Harness) {
    let k = &h.key;
    // Invalid field: 400 with the field named, nothing written.
    let a = call(h, k, Method::POST, "/v1/users", Some(json!({"email": "not-an-email"}))).await;
    assert_eq!((a.status, a.reason()), (StatusCode::BAD_REQUEST, "INVALID_FIELD"));
    assert_eq!(a.violations(), ["user.email"]);
    // Not the schema: unknown field, wrong type, unknown query parameter, bad JSON.
    let a = call(h, k, Method::POST, "/v1/users", Some(json!({"emial": "a@example.com"}))).await;
    assert_eq!((a.status, a.reason()), (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST"));
    assert!(a.json["error"]["message"].as_str().unwrap().contains("emial"), "{}", a.json);
    let a = call(h, k, Method::GET, "/v1/users?page_size=ten", None).await;
    assert_eq!((a.status, a.violations()), (StatusCode::BAD_REQUEST, vec!["page_size".to_string()]));
    let a = call(h, k, Method::GET, "/v1/users?colour=red", None).await;
    assert_eq!((a.status, a.violations()), (StatusCode::BAD_REQUEST, vec!["colour".to_string()]));
    let url = format!("http://{}/v1/users", h.addr());
    let a = answer(http().post(&url).basic_auth(k, Some("")).body("{\"email\": ")).await;
    assert_eq!((a.status, a.reason()), (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST"));
    let huge = format!("{{\"email\": \"{}@example.com\"}}", "a".repeat(9 << 20));
    // Over HTTP/2: the server answers at the limit without reading the rest, and HTTP/1.1
    // would then close the connection under a client still writing (a broken pipe, not 413).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let a = answer(h2.post(&url).basic_auth(k, Some("")).body(huge)).await;
    assert_eq!((a.status, a.reason()), (StatusCode::PAYLOAD_TOO_LARGE, "MESSAGE_TOO_LARGE"));
    assert_eq!(h.count("users").await, 0);

    // Unknown paths and verbs.
    let a = call(h, k, Method::GET, "/v1/nothing", None).await;
    assert_eq!((a.status, a.reason()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    let a = call(h, k, Method::PUT, "/v1/users/usr_1", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "GET, PATCH, DELETE");
    // A custom method's path is matched with its verb: never read as a Get of `enr_…:complete`.
    for verb in [Method::GET, Method::OPTIONS, Method::DELETE] {
        let a = call(h, k, verb.clone(), "/v1/enrollments/enr_01jd3k2m4n5p6q7r8s9t0v1w2x:complete", None).await;
        assert_eq!(
            (a.status, &a.headers["allow"]),
            (StatusCode::METHOD_NOT_ALLOWED, &"POST".parse().unwrap()),
            "{verb}"
        );
        assert!(a.headers.contains_key("x-request-id"), "the gateway's own answers carry a request id");
    }
    let a = call(h, k, Method::OPTIONS, "/v1/users", None).await;
    assert_eq!((a.status, &a.headers["allow"]), (StatusCode::METHOD_NOT_ALLOWED, &"POST, GET".parse().unwrap()));
    let a = call(h, k, Method::GET, "/v1/enrollments/enr_01jd3k2m4n5p6q7r8s9t0v1w2x:nonsense", None).await;
    assert_eq!((a.status, a.reason()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    assert!(a.headers.contains_key("x-request-id"));

    // Another organization's user is 404 to us, as over gRPC.
    let theirs = h.other_org("globex").await;
    let a = call(h, &theirs, Method::POST, "/v1/users", Some(json!({"email": "eve@globex.com"}))).await;
    let id = a.json["id"].as_str().unwrap().to_string();
    for (verb, path, body) in [
        (Method::GET, format!("/v1/users/{id}"), None),
        (Method::PATCH, format!("/v1/users/{id}"), Some(json!({"first_name": "Mallory"}))),
        (Method::DELETE, format!("/v1/users/{id}"), None),
    ] {
        let a = call(h, k, verb.clone(), &path, body).await;
        assert_eq!((a.status, a.reason()), (StatusCode::NOT_FOUND, "NOT_FOUND"), "{verb} {path}");
    }
    let a = call(h, &theirs, Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!(a.json["first_name"], "", "untouched");

    // Every error links to its reason in the error reference this server serves.
    let a = call(h, k, Method::GET, &format!("/v1/users/{id}"), None).await;
    let help = a.json["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.Help")
        .unwrap_or_else(|| panic!("a Help detail: {}", a.json))
        .clone();
    let link = help["links"][0]["url"].as_str().unwrap();
    assert_eq!(link, format!("http://{}/docs/errors#NOT_FOUND", h.addr()), "absolute: {help}");
    let page = http().get(link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let page = page.text().await.unwrap();
    for reason in coursewire_core::error::Reason::ALL {
        assert!(page.contains(&format!("id=\"{}\"", reason.as_str())), "{reason:?} has its anchor");
    }
}

async fn an_enrollment_runs_to_completion_and_exports_as_ndjson(h: &Harness) {
    let k = &h.key;
    let w = world(&mut h.clients()).await;
    let a = call(
        h,
        k,
        Method::POST,
        "/v1/enrollments",
        Some(json!({"user_id": w.user.id, "published_course_id": w.published.id, "due_at": "2030-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let id = a.json["id"].as_str().unwrap().to_string();
    assert_eq!((a.json["state"].as_str(), a.json["due_at"].as_str()), (Some("ACTIVE"), Some("2030-01-01T00:00:00Z")));

    let lesson = &w.course.lessons[0].id;
    let path = format!("/v1/enrollments/{id}/lessons/{lesson}:recordProgress");
    let a = call(h, k, Method::POST, &path, Some(json!({"state": "COMPLETED"}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["enrollment"]["progress"]["lessons_completed"], 1, "{}", a.json);

    let a = call(h, k, Method::POST, &format!("/v1/enrollments/{id}:complete"), Some(json!({"score": 0.9}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!((a.json["state"].as_str(), a.json["score"].as_f64()), (Some("COMPLETED"), Some(0.9)));
    let a = call(h, k, Method::GET, "/v1/enrollments?state=COMPLETED", None).await;
    assert_eq!(a.json["enrollments"][0]["id"], id.as_str(), "{}", a.json);

    // The export: one JSON object per line, as `curl | jq` reads it.
    let other = user(&mut h.clients(), "grace@example.com").await;
    enroll(&mut h.clients(), &other.id, &w.published.id).await.unwrap();
    let url = format!("http://{}/v1/enrollments:export?state=ACTIVE", h.addr());
    let response = http().get(&url).basic_auth(k, Some("")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["user_id"], other.id.as_str());
    // A stream that cannot start is an HTTP error, not a 200 with an error line.
    let a = answer(http().get(&url)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_rate_limited_call_answers_429_with_its_headers() {
    let h = Harness::start_with(Backend::Sqlite, Limits::Memory, "2/1m").await;
    for remaining in ["1", "0"] {
        let a = call(&h, &h.key, Method::GET, "/v1/ping", None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["x-ratelimit-remaining"], remaining);
        assert_eq!(a.headers["x-ratelimit-limit"], "2");
    }
    let a = call(&h, &h.key, Method::GET, "/v1/ping", None).await;
    assert_eq!((a.status, a.reason()), (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"));
    assert_eq!(a.headers["x-ratelimit-remaining"], "0");
    let retry_after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(a.json["error"]["status"], "RESOURCE_EXHAUSTED");
}

crate::backend_tests!(
    each_auth_form_reaches_ping,
    users_are_created_read_listed_updated_and_deleted,
    bad_input_and_other_organizations_are_refused,
    an_enrollment_runs_to_completion_and_exports_as_ndjson,
);

/// The README's curl cookbook, run verbatim (only the port and key are filled in) against
/// the real binary started as a user starts it.
#[test]
fn readme_curl_cookbook_works_verbatim() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("<!-- curl-cookbook:start -->").nth(1).unwrap().split("<!-- curl-cookbook:end -->").next();
    let script = block.unwrap().trim().trim_start_matches("```sh").trim_end_matches("```");
    let app = crate::processes::all_in_one(&[]);
    let script = script
        .replace("localhost:50051", &format!("localhost:{}", app.port))
        .replace("sk_paste_the_key_printed_at_first_start", &app.key);
    let out = std::process::Command::new("bash").args(["-euo", "pipefail", "-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cookbook failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "{}", "ping: {stdout}");
    assert!(
        lines.contains(
            &r#"{"state":"COMPLETED","progress":{"lessons_completed":1,"lessons_required":1,"percent":100}}"#
        ),
        "{stdout}"
    );
    assert!(lines.contains(&r#"{"first_name":"Grace","last_name":"Hopper"}"#), "{stdout}");
    let exported =
        lines.iter().filter(|l| l.starts_with(r#"{"user_id":"usr_"#) && l.contains(r#""state":"COMPLETED""#));
    assert_eq!(exported.count(), 1, "one export line: {stdout}");
    let error: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], 400, "{stdout}");
    assert_eq!(error["error"]["details"][0]["reason"], "INVALID_FIELD");
    let violations = &error["error"]["details"][1]["field_violations"];
    assert_eq!(violations[0]["field"], "domain.hostname", "{stdout}");
}

/// `/openapi.json` passes a stock validator, lists every method, and what it describes is
/// what is served: three operations are called at the paths and with the fields it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_its_operations_answer() {
    let h = Harness::start(Backend::Sqlite).await;
    let response = http().get(format!("http://{}/openapi.json", h.addr())).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "served without a key, like reflection");
    let doc: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let validated =
        std::process::Command::new("python3").args(["-m", "openapi_spec_validator"]).arg(&file).output().unwrap();
    // Like the standardwebhooks check beside the signer, a missing validator is a failure
    // (`pip install openapi-spec-validator`), never a silent pass.
    assert!(
        validated.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    // operationId → (verb, path)
    let mut operations = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (verb, op) in item.as_object().unwrap() {
            operations.insert(op["operationId"].as_str().unwrap().to_string(), (verb.to_uppercase(), path.clone()));
        }
    }
    assert_eq!(operations.len(), coursewire_methods().len(), "one operation per method");
    // Each operation describes its errors and headers, with real examples.
    for item in doc["paths"].as_object().unwrap().values() {
        for (verb, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            for status in ["400", "401", "403", "429", "503"] {
                assert!(responses[status]["$ref"].is_string(), "{verb} {}: {status}", op["operationId"]);
            }
            assert!(responses["200"]["headers"]["x-request-id"].is_object());
        }
    }
    let limited = &doc["components"]["responses"]["RateLimited"];
    assert_eq!(limited["content"]["application/json"]["example"]["error"]["code"], 429);
    assert!(limited["headers"]["retry-after"].is_object());

    let verb = |id: &str| Method::from_bytes(operations[id].0.as_bytes()).unwrap();
    let a = call(&h, &h.key, verb("Ping"), &operations["Ping"].1, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let user = &doc["components"]["schemas"]["coursewire.v1.User"]["properties"];
    assert!(user["email"]["type"] == "string" && user["created_at"]["format"] == "date-time", "{user}");
    let a =
        call(&h, &h.key, verb("CreateUser"), &operations["CreateUser"].1, Some(json!({"email": "ada@example.com"})))
            .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let get = operations["GetUser"].1.replace("{id}", a.json["id"].as_str().unwrap());
    let a = call(&h, &h.key, verb("GetUser"), &get, None).await;
    assert_eq!((a.status, a.json["email"].as_str()), (StatusCode::OK, Some("ada@example.com")));
}

/// `/docs` in headless Chromium: a person authorizes with a key as the Basic user name and
/// runs Ping from the page, then opens the error reference (tests/browser/docs.cjs drives it
/// with playwright-core and checks it with axe-core).
#[cfg_attr(not(cw_browser), ignore = "skipped: Chromium or playwright-core (COURSEWIRE_NODE_PATH) is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_authorizes_with_a_key_and_runs_ping() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = std::env::var("COURSEWIRE_NODE_PATH").ok();
    let playwright = modules.as_ref().is_some_and(|m| std::path::Path::new(m).join("playwright-core").exists());
    assert!(
        std::path::Path::new(&chromium).exists() && playwright,
        "Chromium and playwright-core are required (.ci/run installs them)"
    );
    let h = Harness::start(Backend::Sqlite).await;
    let page = http().get(format!("http://{}/docs", h.addr())).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/docs.cjs");
    let base = format!("http://{}", h.addr());
    let out = tokio::process::Command::new("node")
        .args([script, &base, &h.key])
        .env("NODE_PATH", modules.unwrap())
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("status 200"), "{stdout}");
    let basic = STANDARD.encode(format!("{}:", h.key));
    assert!(stdout.contains(&format!("Authorization: Basic {basic}")), "the key as the user name: {stdout}");
    assert!(stdout.contains("errors row 404"), "the error reference shows NOT_FOUND's status: {stdout}");
    assert!(stdout.contains("errors axe serious 0 "), "{stdout}");
}

/// `--http-listen` moves HTTP/JSON (and the reference) to an address of its own; the gRPC
/// listener then answers gRPC alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listen_serves_http_json_on_its_own_address() {
    let http_port = crate::harness::free_port();
    let app = crate::processes::all_in_one(&["--http-listen", &format!("127.0.0.1:{http_port}")]);
    let ping = |port: u16| http().get(format!("http://127.0.0.1:{port}/v1/ping")).basic_auth(&app.key, Some("")).send();
    let on_http = ping(http_port).await.unwrap();
    assert_eq!(on_http.status(), StatusCode::OK);
    assert_eq!(on_http.text().await.unwrap(), "{}\n");
    let docs = http().get(format!("http://127.0.0.1:{http_port}/openapi.json")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);

    let on_grpc = ping(app.port).await.unwrap();
    assert!(!on_grpc.status().is_success(), "HTTP/JSON is not served there: {on_grpc:?}");
    // gRPC itself is unaffected.
    let mut c = crate::processes::clients(app.port, &app.key).await;
    c.account.ping(coursewire_proto::v1::PingRequest {}).await.unwrap();
}

/// Pages on the origins `--cors-allowed-origins` names may call the API from a browser
/// (HTTP/JSON and gRPC-Web); other origins get no CORS grant; without the flag, none do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_admits_the_listed_origins_only() {
    const PORTAL: &str = "https://portal.example.com";
    // A wildcard, or anything but an origin, is refused at start, naming the flag.
    let dir = tempfile::tempdir().unwrap();
    for bad in ["*", "portal.example.com", "https://portal.example.com/app"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coursewire"))
            .current_dir(dir.path())
            .args(["--cors-allowed-origins", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("--cors-allowed-origins"), "{bad}: {stderr}");
    }
    let app =
        crate::processes::all_in_one(&["--cors-allowed-origins", &format!("{PORTAL}/,https://admin.example.com")]);
    let preflight = |port: u16, origin: &'static str| {
        http()
            .request(Method::OPTIONS, format!("http://127.0.0.1:{port}/v1/users"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let granted = preflight(app.port, PORTAL).await.unwrap();
    assert!(granted.status().is_success(), "{granted:?}");
    let h = granted.headers();
    assert_eq!(h["access-control-allow-origin"], PORTAL);
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"), "{h:?}");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("PATCH"), "{h:?}");
    assert!(!h.contains_key("access-control-allow-credentials"), "keys travel in headers, never cookies");

    let refused = preflight(app.port, "https://evil.example.com").await.unwrap();
    assert!(!refused.headers().contains_key("access-control-allow-origin"), "{refused:?}");

    // The call itself carries the grant and exposes the headers a page needs.
    let call = http()
        .get(format!("http://127.0.0.1:{}/v1/ping", app.port))
        .header("origin", PORTAL)
        .basic_auth(&app.key, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::OK);
    assert_eq!(call.headers()["access-control-allow-origin"], PORTAL);
    let exposed = call.headers()["access-control-expose-headers"].to_str().unwrap().to_string();
    for name in ["x-ratelimit-remaining", "retry-after", "x-request-id", "grpc-status"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }

    // Without the flag, no origin is granted.
    let closed = crate::processes::all_in_one(&[]);
    let response = preflight(closed.port, PORTAL).await.unwrap();
    assert!(!response.headers().contains_key("access-control-allow-origin"), "{response:?}");
}

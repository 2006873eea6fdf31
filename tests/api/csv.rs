//! CSV downloads for spreadsheets and BI tools: a List or Export route answered as
//! `text/csv` (Accept, or `?alt=csv`), every row in one download charged as one call, read
//! back with Python's stock `csv` module.
use coursewire_proto::v1::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::fixtures::*;
use crate::harness::Harness;

struct Download {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

async fn download(h: &Harness, key: &str, path_and_query: &str, accept_csv: bool) -> Download {
    let mut req = reqwest::Client::new().get(format!("http://{}{path_and_query}", h.addr())).basic_auth(key, Some(""));
    if accept_csv {
        req = req.header("accept", "text/csv");
    }
    let response = req.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    Download { status, headers, bytes: response.bytes().await.unwrap().to_vec() }
}

/// The rows as Python's `csv.DictReader` reads them (an outside parser: RFC 4180 quoting,
/// a BOM read as `utf-8-sig`), with the header row.
fn parsed(bytes: &[u8]) -> (Vec<String>, Vec<serde_json::Map<String, Value>>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("download.csv");
    std::fs::write(&file, bytes).unwrap();
    let script = "import csv, json, sys\n\
        with open(sys.argv[1], encoding='utf-8-sig', newline='') as f:\n\
        \x20   r = csv.DictReader(f)\n\
        \x20   rows = list(r)\n\
        print(json.dumps({'header': r.fieldnames, 'rows': rows}))";
    let out = std::process::Command::new("python3").args(["-c", script]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let header = v["header"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let rows = v["rows"].as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect();
    (header, rows)
}

fn remaining(d: &Download) -> i64 {
    d.headers["x-ratelimit-remaining"].to_str().unwrap().parse().unwrap()
}

async fn every_user_downloads_as_one_csv_charged_once(h: &Harness) {
    // More than one page (1,000) of users, two of them with names a spreadsheet would misread.
    let calls = (0..1_203).map(|i| {
        let mut c = h.clients();
        async move {
            let (first, last) = match i {
                0 => ("=HYPERLINK(\"http://evil.example\")".to_string(), "Formula".to_string()),
                1 => ("Zoë, \"the\" first".to_string(), "Multi\nline".to_string()),
                _ => (format!("Learner {i}"), "Test".to_string()),
            };
            let u =
                User { email: format!("u{i}@example.com"), first_name: first, last_name: last, ..Default::default() };
            c.users.create_user(CreateUserRequest { user: Some(u), ..Default::default() }).await.unwrap();
        }
    });
    let mut calls = futures::stream::iter(calls).buffer_unordered(16);
    let mut made = 0;
    while calls.next().await.is_some() {
        made += 1;
        if made % 500 == 0 {
            h.clock.advance(61_000); // past the minute's 600 writes
        }
    }

    let d = download(h, &h.key, "/v1/users", true).await;
    assert_eq!(d.status, StatusCode::OK, "{}", String::from_utf8_lossy(&d.bytes));
    assert_eq!(d.headers["content-type"], "text/csv; charset=utf-8; header=present");
    assert_eq!(d.headers["content-disposition"], "attachment; filename=\"users.csv\"");
    assert!(d.bytes.ends_with(b"\r\n") && !d.bytes.starts_with("\u{feff}".as_bytes()));
    let (header, rows) = parsed(&d.bytes);
    assert_eq!(header, fields("coursewire.v1.User"), "columns are the proto field names, in order");
    assert_eq!(rows.len(), 1_203, "every row, past the first page");
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1_203, "no row twice");
    let by_email = |e: &str| rows.iter().find(|r| r["email"] == e).unwrap().clone();
    assert_eq!(by_email("u0@example.com")["first_name"], "'=HYPERLINK(\"http://evil.example\")", "formula defused");
    let quoted = by_email("u1@example.com");
    assert_eq!(
        (quoted["first_name"].as_str(), quoted["last_name"].as_str()),
        (Some("Zoë, \"the\" first"), Some("Multi\nline"))
    );
    assert!(by_email("u2@example.com")["created_at"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC");

    // Two pages, one call: the next call finds one unit fewer left, not two.
    let next = download(h, &h.key, "/v1/users?alt=csv&page_size=1", false).await;
    assert_eq!(remaining(&next), remaining(&d) - 1, "a download is charged once");
    let (_, rows) = parsed(&next.bytes);
    assert_eq!(rows.len(), 1_203, "page_size does not cut a download");

    // For Excel: the byte-order mark; filters apply as in JSON.
    let excel = download(h, &h.key, "/v1/users?alt=csv&excel=true", false).await;
    assert!(excel.bytes.starts_with("\u{feff}id,".as_bytes()));

    // Another organization downloads only its own (none); a bad key gets the JSON error.
    let theirs = h.other_org("globex").await;
    let (_, rows) = parsed(&download(h, &theirs, "/v1/users", true).await.bytes);
    assert!(rows.is_empty());
    let bad = download(h, "sk_000000000000000000000000000000000000000000000000", "/v1/users", true).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.headers["content-type"], "application/json");
    // Only lists and exports are tables.
    let id = by_email("u2@example.com")["id"].as_str().unwrap().to_string();
    let not_a_list = download(h, &h.key, &format!("/v1/users/{id}?alt=csv"), false).await;
    assert_eq!(not_a_list.status, StatusCode::BAD_REQUEST);
}

async fn an_export_streams_as_csv(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let e = c
        .enrollments
        .create_enrollment(CreateEnrollmentRequest {
            user_id: w.user.id.clone(),
            published_course_id: w.published.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let d = download(h, &h.key, "/v1/enrollments:export", true).await;
    assert_eq!(d.status, StatusCode::OK, "{}", String::from_utf8_lossy(&d.bytes));
    let (header, rows) = parsed(&d.bytes);
    assert_eq!(header, fields("coursewire.v1.Enrollment"));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["id"].as_str(), rows[0]["state"].as_str()), (Some(e.id.as_str()), Some("ACTIVE")));
}

/// The proto field names of message `name`, in declaration order.
fn fields(name: &str) -> Vec<String> {
    let pool = prost_reflect::DescriptorPool::decode(coursewire_proto::FILE_DESCRIPTOR_SET).unwrap();
    pool.get_message_by_name(name).unwrap().fields().map(|f| f.name().to_string()).collect()
}

crate::backend_tests!(every_user_downloads_as_one_csv_charged_once, an_export_streams_as_csv);

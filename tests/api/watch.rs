//! WatchEvents: replay then live with no gap or duplicate, resume from a cursor, type
//! filters, and a slow consumer closed with a status it can resume from.
use std::collections::HashSet;
use std::time::Duration;

use coursewire_api::events::relay::Hub;
use coursewire_core::events::bus::InProcessBus;
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::{Backend, Harness, Limits, STREAMS_PER_ORG};

async fn next(stream: &mut tonic::Streaming<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

async fn replay_then_live_without_gap_or_duplicate(h: &Harness) {
    let mut c = h.clients();
    for i in 0..5 {
        domain(&mut c, &format!("d{i}.example.com")).await;
    }
    let mut stream = c
        .events
        .watch_events(WatchEventsRequest { from_start: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    // Writers keep going while the stream switches from the log to live events.
    let writer = {
        let mut c = h.clients();
        tokio::spawn(async move {
            for i in 5..25 {
                domain(&mut c, &format!("d{i}.example.com")).await;
            }
        })
    };
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(next(&mut stream).await);
    }
    writer.await.unwrap();
    let unique: HashSet<_> = ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(unique.len(), 25, "no duplicate");
    let hosts: Vec<String> = ids
        .iter()
        .map(|e| e.data.as_ref().unwrap().fields["hostname"].kind.clone())
        .map(|k| format!("{k:?}"))
        .collect();
    for i in 0..25 {
        assert!(hosts[i].contains(&format!("d{i}.example.com")), "in commit order, no gap: {hosts:?}");
    }

    // Resume after the 10th event: the 11th onwards, then live.
    let mut resumed = c
        .events
        .watch_events(WatchEventsRequest { after_event_id: ids[9].id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for expected in &ids[10..] {
        assert_eq!(&next(&mut resumed).await.id, &expected.id);
    }
    let live = domain(&mut c, "live.example.com").await;
    let e = next(&mut resumed).await;
    assert_eq!(e.resource_id, live.id);

    // Only new events, filtered by type.
    let mut users_only = c
        .events
        .watch_events(WatchEventsRequest { types: vec!["user.*".into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    domain(&mut c, "ignored.example.com").await;
    let u = user(&mut c, "watched@example.com").await;
    let e = next(&mut users_only).await;
    assert_eq!((e.r#type.as_str(), e.resource_id.as_str()), ("user.created", u.id.as_str()));
    assert_err(
        c.events
            .watch_events(WatchEventsRequest {
                after_event_id: "evt_01jd3xkq7w8h2m4n6p8r0t2v4x".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_can_resume() {
    let hub = Hub { watch_buffer: 5, slow_consumer_timeout: Duration::from_millis(300), ..Hub::default() };
    let h = Harness::start_full(Backend::Sqlite, Limits::Memory, "100000/1m", InProcessBus::new(), hub, None).await;
    let mut c = h.clients();
    // Large events (~125 KB each), so the transport's own buffers (HTTP/2 windows) fill quickly.
    const N: usize = 40;
    for i in 0..N {
        let lessons =
            (0..500).map(|l| Lesson { title: format!("{i}-{l}-{}", "x".repeat(180)), ..Default::default() }).collect();
        let course = Course { title: format!("Course {i}"), lessons, ..Default::default() };
        c.courses.create_course(CreateCourseRequest { course: Some(course), request_id: String::new() }).await.unwrap();
    }
    let mut stream = c
        .events
        .watch_events(WatchEventsRequest { from_start: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await; // not reading: buffers fill up
    let mut received = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(e)) => received.push(e.id),
            Ok(None) => panic!("closed without a status"),
            Err(s) => break s,
        }
    };
    assert!(received.len() < N, "closed before the end");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "SLOW_CONSUMER");
    let cursor = meta(&status, "resume_after_event_id").unwrap();
    assert_eq!(&cursor, received.last().unwrap(), "the cursor is the last event delivered");

    let mut resumed = c
        .events
        .watch_events(WatchEventsRequest { after_event_id: cursor, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    while received.len() < N {
        received.push(next(&mut resumed).await.id);
    }
    assert_eq!(received.iter().collect::<HashSet<_>>().len(), N, "resumed without gap or duplicate");
}

async fn open_watch(c: &mut crate::harness::Clients) -> Result<tonic::Streaming<Event>, tonic::Status> {
    c.events.watch_events(WatchEventsRequest::default()).await.map(|r| r.into_inner())
}

async fn streams_are_capped_per_organization(h: &Harness) {
    let mut c = h.clients();
    let mut open = Vec::new();
    for _ in 0..STREAMS_PER_ORG {
        open.push(open_watch(&mut c).await.unwrap());
    }
    assert_err(open_watch(&mut c).await, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    let export = c.enrollments.export_enrollments(ExportEnrollmentsRequest::default()).await;
    assert_err(export, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    let other = h.other_org("initech").await;
    let mut theirs = h.clients_with(&other);
    open_watch(&mut theirs).await.expect("organizations are counted apart");
    // Closing a stream frees its place once the server notices.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open_watch(&mut c).await {
            Ok(s) => break open.push(s),
            Err(s) => assert_eq!(reason(&s), "TOO_MANY_STREAMS"),
        }
        assert!(std::time::Instant::now() < deadline, "the closed stream's place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM does not wait on open streams: they end with UNAVAILABLE and the cursor to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_ends_streams_with_a_cursor() {
    let mut h = Harness::start(Backend::Sqlite).await;
    let mut c = h.clients();
    for i in 0..3 {
        domain(&mut c, &format!("s{i}.example.com")).await;
    }
    let mut stream = c
        .events
        .watch_events(WatchEventsRequest { from_start: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut last = String::new();
    for _ in 0..3 {
        last = next(&mut stream).await.id;
    }
    let (_, ended) = tokio::join!(h.stop_server(), async {
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("the stream ended")
    });
    let status = ended.expect_err("the stream ends with a status, not as if complete");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(meta(&status, "resume_after_event_id").unwrap(), last);
}

crate::backend_tests!(replay_then_live_without_gap_or_duplicate, streams_are_capped_per_organization);

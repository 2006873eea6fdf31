//! Keyset pages: sizes, stability under concurrent inserts, token scoping, filters.
use std::collections::HashSet;

use coursewire_proto::v1::enrollment::State;
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::Harness;

async fn pages_are_stable_under_inserts(h: &Harness) {
    let mut c = h.clients();
    for i in 0..7 {
        user(&mut c, &format!("u{i}@example.com")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .users
            .list_users(ListUsersRequest { page_size: 3, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.users.iter().map(|u| u.email.clone()));
        // Rows inserted while paging land after the cursor: nothing is skipped or repeated.
        if pages == 1 {
            user(&mut c, "late@example.com").await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 8);
    assert_eq!(seen.last().unwrap(), "late@example.com");

    let default = c.users.list_users(ListUsersRequest::default()).await.unwrap().into_inner();
    assert_eq!(default.users.len(), 8, "default page size is 50");
    assert!(default.next_page_token.is_empty());

    // A token belongs to its list and filters.
    let first = c.users.list_users(ListUsersRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    let filtered =
        ListUsersRequest { page_size: 1, page_token: first.next_page_token.clone(), email: "u1@example.com".into() };
    assert_err(c.users.list_users(filtered).await, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    assert_err(
        c.domains.list_domains(ListDomainsRequest { page_size: 1, page_token: first.next_page_token }).await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
}

async fn enrollment_filters(h: &Harness) {
    let mut c = h.clients();
    let w = world(&mut c).await;
    let second = course(&mut c, 1).await;
    let second_pub = publish(&mut c, &second.id, &w.domain.id).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let u = user(&mut c, &format!("f{i}@example.com")).await;
        let p = if i % 2 == 0 { &w.published.id } else { &second_pub.id };
        ids.push(enroll(&mut c, &u.id, p).await.unwrap());
    }
    let before_completion = h.clock.now_ms_timestamp();
    h.clock.advance(10);
    c.enrollments
        .complete_enrollment(CompleteEnrollmentRequest { id: ids[0].id.clone(), ..Default::default() })
        .await
        .unwrap();
    let list = |r: ListEnrollmentsRequest| {
        let mut c = h.clients();
        async move { c.enrollments.list_enrollments(r).await.unwrap().into_inner().enrollments }
    };
    assert_eq!(list(ListEnrollmentsRequest { course_id: second.id.clone(), ..Default::default() }).await.len(), 2);
    assert_eq!(list(ListEnrollmentsRequest { user_id: ids[3].user_id.clone(), ..Default::default() }).await.len(), 1);
    assert_eq!(
        list(ListEnrollmentsRequest { published_course_id: w.published.id.clone(), ..Default::default() }).await.len(),
        2
    );
    assert_eq!(list(ListEnrollmentsRequest { state: State::Completed as i32, ..Default::default() }).await.len(), 1);
    assert_eq!(list(ListEnrollmentsRequest { state: State::Active as i32, ..Default::default() }).await.len(), 3);
    let completed_after =
        list(ListEnrollmentsRequest { completed_after: Some(before_completion), ..Default::default() }).await;
    assert_eq!(completed_after.len(), 1);
    assert_eq!(completed_after[0].id, ids[0].id);
    assert_eq!(
        list(ListEnrollmentsRequest { updated_after: Some(before_completion), ..Default::default() }).await.len(),
        1
    );
    assert_eq!(
        list(ListEnrollmentsRequest { completed_before: Some(before_completion), ..Default::default() }).await.len(),
        0
    );
}

trait NowTimestamp {
    fn now_ms_timestamp(&self) -> pbjson_types::Timestamp;
}

impl NowTimestamp for coursewire_api::clock::ManualClock {
    fn now_ms_timestamp(&self) -> pbjson_types::Timestamp {
        coursewire_api::clock::to_timestamp(coursewire_api::clock::Clock::now_ms(self))
    }
}

crate::backend_tests!(pages_are_stable_under_inserts, enrollment_filters);

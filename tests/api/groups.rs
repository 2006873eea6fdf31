//! Groups: membership × assignments fan out into enrollments through operations, each
//! enrollment exactly once with its event; removal keeps enrollments; rules and isolation.
use std::time::Duration;

use coursewire_proto::v1::membership_result::Result as Outcome;
use coursewire_proto::v1::*;
use tonic::Code;

use crate::fixtures::*;
use crate::harness::{Clients, Harness};
use crate::learning_paths::path_world;

async fn group(c: &mut Clients, name: &str) -> Group {
    let g = Group { name: name.into(), ..Default::default() };
    c.groups.create_group(CreateGroupRequest { group: Some(g), request_id: String::new() }).await.unwrap().into_inner()
}

async fn add(c: &mut Clients, group_id: &str, user_ids: Vec<String>) -> AddGroupMembersResponse {
    let r = AddGroupMembersRequest { group_id: group_id.into(), user_ids, request_id: String::new() };
    c.groups.add_group_members(r).await.unwrap().into_inner()
}

async fn assign(c: &mut Clients, group_id: &str, target: assignment::Target) -> Result<Operation, tonic::Status> {
    let a = Assignment { target: Some(target), due_at: None };
    let r = AssignToGroupRequest { group_id: group_id.into(), assignment: Some(a) };
    c.groups.assign_to_group(r).await.map(|r| r.into_inner())
}

/// Polls the operation until it is done (the fan-out runs in the background).
pub async fn finished(c: &mut Clients, op: &Operation) -> Operation {
    let polled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let got = c.groups.get_operation(GetOperationRequest { id: op.id.clone() }).await.unwrap().into_inner();
            if got.done {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    polled.expect("the operation finished within 60 s")
}

async fn users(c: &mut Clients, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(user(c, &format!("{prefix}{i}@example.com")).await.id);
    }
    ids
}

async fn count(h: &Harness, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(h.db.pool()).await.unwrap()
}

/// Every live enrollment has exactly one `enrollment.created`, and no (user, course) pair twice.
async fn each_enrollment_once(h: &Harness) -> i64 {
    let enrollments = count(h, "SELECT COUNT(*) FROM enrollments WHERE deleted_at IS NULL").await;
    let pairs =
        count(h, "SELECT COUNT(*) FROM (SELECT DISTINCT user_id, published_course_id FROM enrollments) p").await;
    let created = count(h, "SELECT COUNT(*) FROM events WHERE type = 'enrollment.created'").await;
    let distinct = count(h, "SELECT COUNT(DISTINCT resource_id) FROM events WHERE type = 'enrollment.created'").await;
    assert_eq!((pairs, created, distinct), (enrollments, enrollments, enrollments));
    enrollments
}

async fn membership_fans_out_to_enrollments_once(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let g = group(&mut c, "New hires").await;
    // 120 members: more than two batches.
    let members = users(&mut c, "hire", 120).await;
    let added = add(&mut c, &g.id, members.clone()).await;
    assert!(added.operation.is_none(), "nothing assigned yet, nothing to enroll");
    assert!(added.results.iter().all(|r| matches!(r.result, Some(Outcome::Membership(_)))));

    let op = assign(&mut c, &g.id, assignment::Target::LearningPathId(w.path.id.clone())).await.unwrap();
    assert_eq!((op.done, op.members_total, op.kind), (false, 120, operation::Kind::EnrollAssignment as i32));
    let op = finished(&mut c, &op).await;
    assert_eq!((op.members_done, op.members_failed, op.first_error), (120, 0, None));
    assert_eq!(each_enrollment_once(h).await, 360);
    assert_eq!(count(h, "SELECT COUNT(*) FROM path_enrollments").await, 120);
    let completed =
        format!("SELECT COUNT(*) FROM events WHERE type = 'operation.completed' AND resource_id = '{}'", op.id);
    assert_eq!(count(h, &completed).await, 1);

    // New members, one inactive: enrolled in everything assigned; the inactive one is reported.
    let newcomers = users(&mut c, "late", 3).await;
    let off = User { id: newcomers[2].clone(), active: false, ..Default::default() };
    let mask = Some(pbjson_types::FieldMask { paths: vec!["active".into()] });
    c.users.update_user(UpdateUserRequest { user: Some(off), update_mask: mask }).await.unwrap();
    let added = add(&mut c, &g.id, newcomers.clone()).await;
    let op = finished(&mut c, added.operation.as_ref().expect("an operation enrolls the newcomers")).await;
    assert_eq!((op.members_total, op.members_done, op.members_failed), (3, 3, 1));
    assert_eq!(op.first_error.unwrap().reason, "USER_INACTIVE");
    assert_eq!(each_enrollment_once(h).await, 366);

    // Re-adding a member is refused per item; a course assigned later reaches everyone.
    let again = add(&mut c, &g.id, vec![members[0].clone()]).await;
    assert!(matches!(&again.results[0].result, Some(Outcome::Error(e)) if e.reason == "GROUP_MEMBER_EXISTS"));
    let d = domain(&mut c, "extra.acme.com").await;
    let extra_course = course(&mut c, 1).await;
    let extra = publish(&mut c, &extra_course.id, &d.id).await;
    let op = assign(&mut c, &g.id, assignment::Target::PublishedCourseId(extra.id.clone())).await.unwrap();
    let op = finished(&mut c, &op).await;
    assert_eq!((op.members_total, op.members_done, op.members_failed), (123, 123, 1));
    assert_eq!(each_enrollment_once(h).await, 366 + 122);
    let got = c.groups.get_group(GetGroupRequest { id: g.id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.member_count, got.assignments.len()), (123, 2));
    // What the group grants, and what the path holds, are filters of the enrollment reports.
    let granted = ListEnrollmentsRequest { group_id: g.id.clone(), page_size: 1000, ..Default::default() };
    assert_eq!(c.enrollments.list_enrollments(granted).await.unwrap().into_inner().enrollments.len(), 488);
    let in_path = ExportEnrollmentsRequest { learning_path_id: w.path.id.clone(), ..Default::default() };
    let mut stream = c.enrollments.export_enrollments(in_path).await.unwrap().into_inner();
    let mut exported = 0;
    while let Some(e) = stream.message().await.unwrap() {
        assert!(w.path.published_course_ids.contains(&e.published_course_id));
        exported += 1;
    }
    assert_eq!(exported, 366);

    // Removing a member keeps their enrollments and records the removal.
    let before = count(h, "SELECT COUNT(*) FROM enrollments WHERE deleted_at IS NULL").await;
    let r =
        RemoveGroupMembersRequest { group_id: g.id.clone(), user_ids: vec![members[0].clone(), members[0].clone()] };
    let removed = c.groups.remove_group_members(r).await.unwrap().into_inner();
    assert!(matches!(&removed.results[0].result, Some(Outcome::Membership(m)) if m.removed_at.is_some()));
    assert!(matches!(&removed.results[1].result, Some(Outcome::Error(e)) if e.reason == "NOT_FOUND"));
    assert_eq!(count(h, "SELECT COUNT(*) FROM enrollments WHERE deleted_at IS NULL").await, before);
    assert_eq!(count(h, "SELECT COUNT(*) FROM events WHERE type = 'group_membership.deleted'").await, 1);
    let listed = c
        .groups
        .list_group_members(ListGroupMembersRequest { group_id: g.id.clone(), page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.members.len(), 122);
    let granted = ListEnrollmentsRequest { group_id: g.id.clone(), page_size: 1000, ..Default::default() };
    let granted = c.enrollments.list_enrollments(granted).await.unwrap().into_inner().enrollments;
    assert_eq!(granted.len(), 484, "the removed member's enrollments are no longer granted by the group");
    assert!(!listed.members.iter().any(|m| m.user_id == members[0]));
}

async fn group_rules_bad_input_and_isolation(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let g = group(&mut c, "Team").await;
    let ada = user(&mut c, "ada@example.com").await;
    add(&mut c, &g.id, vec![ada.id.clone()]).await;
    let other_key = h.other_org("globex").await;
    let mut o = h.clients_with(&other_key);
    let theirs = group(&mut o, "Theirs").await;
    let tables = "(SELECT COUNT(*) FROM user_groups) + (SELECT COUNT(*) FROM group_members) \
                  + (SELECT COUNT(*) FROM group_assignments) + (SELECT COUNT(*) FROM operations)";
    let before = (h.snapshot().await, count(h, &format!("SELECT {tables}")).await);

    let r = DeleteGroupRequest { id: g.id.clone(), etag: String::new() };
    assert_err(c.groups.delete_group(r).await, Code::FailedPrecondition, "GROUP_HAS_MEMBERS");
    let too_many =
        AddGroupMembersRequest { group_id: g.id.clone(), user_ids: vec![ada.id.clone(); 1001], ..Default::default() };
    let s = assert_err(c.groups.add_group_members(too_many).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["user_ids".to_string()]);
    let none = AssignToGroupRequest { group_id: g.id.clone(), assignment: None };
    let s = assert_err(c.groups.assign_to_group(none).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["assignment".to_string()]);
    let past = AssignToGroupRequest {
        group_id: g.id.clone(),
        assignment: Some(Assignment {
            target: Some(assignment::Target::PublishedCourseId(w.published[0].id.clone())),
            due_at: Some(timestamp(1000)),
        }),
    };
    let s = assert_err(c.groups.assign_to_group(past).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["assignment.due_at".to_string()]);
    let unnamed = CreateGroupRequest { group: Some(Group::default()), request_id: String::new() };
    let s = assert_err(c.groups.create_group(unnamed).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["group.name".to_string()]);

    // Another organization's groups, users, courses and paths are not found, item by item.
    let nf = Code::NotFound;
    assert_err(o.groups.get_group(GetGroupRequest { id: g.id.clone() }).await, nf, "NOT_FOUND");
    let r = AddGroupMembersRequest { group_id: g.id.clone(), user_ids: vec![ada.id.clone()], ..Default::default() };
    assert_err(o.groups.add_group_members(r).await, nf, "NOT_FOUND");
    let r =
        AddGroupMembersRequest { group_id: theirs.id.clone(), user_ids: vec![ada.id.clone()], ..Default::default() };
    let res = o.groups.add_group_members(r).await.unwrap().into_inner();
    assert!(matches!(&res.results[0].result, Some(Outcome::Error(e)) if e.reason == "NOT_FOUND"));
    assert_err(
        assign(&mut o, &theirs.id, assignment::Target::LearningPathId(w.path.id.clone())).await,
        nf,
        "NOT_FOUND",
    );
    let course = assignment::Target::PublishedCourseId(w.published[0].id.clone());
    assert_err(assign(&mut o, &theirs.id, course).await, nf, "NOT_FOUND");
    let r = ListGroupMembersRequest { group_id: g.id.clone(), ..Default::default() };
    assert_err(o.groups.list_group_members(r).await, nf, "NOT_FOUND");
    let r = RemoveGroupMembersRequest { group_id: g.id.clone(), user_ids: vec![ada.id.clone()] };
    assert_err(o.groups.remove_group_members(r).await, nf, "NOT_FOUND");
    assert!(o.groups.list_groups(ListGroupsRequest::default()).await.unwrap().into_inner().groups.len() == 1);
    let rename = Group { id: g.id.clone(), name: "Mine".into(), ..Default::default() };
    assert_err(
        o.groups.update_group(UpdateGroupRequest { group: Some(rename), update_mask: None }).await,
        nf,
        "NOT_FOUND",
    );
    assert_err(
        o.groups.delete_group(DeleteGroupRequest { id: g.id.clone(), etag: String::new() }).await,
        nf,
        "NOT_FOUND",
    );
    let r = UnassignFromGroupRequest { group_id: g.id.clone(), target_id: w.path.id.clone() };
    assert_err(o.groups.unassign_from_group(r).await, nf, "NOT_FOUND");
    let r = UnassignFromGroupRequest { group_id: g.id.clone(), target_id: w.path.id.clone() };
    assert_err(c.groups.unassign_from_group(r).await, nf, "NOT_FOUND");
    let r = UnassignFromGroupRequest { group_id: g.id.clone(), target_id: "usr_nope".into() };
    let s = assert_err(c.groups.unassign_from_group(r).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["target_id".to_string()]);
    let mask = Some(pbjson_types::FieldMask { paths: vec!["assignments".into()] });
    let r = UpdateGroupRequest { group: Some(Group { id: g.id.clone(), ..Default::default() }), update_mask: mask };
    let s = assert_err(c.groups.update_group(r).await, Code::InvalidArgument, "INVALID_FIELD");
    assert_eq!(violations(&s), vec!["update_mask".to_string()]);
    let bad = AddGroupMembersRequest { group_id: g.id.clone(), user_ids: vec!["grp_x".into()], ..Default::default() };
    let res = c.groups.add_group_members(bad).await.unwrap().into_inner();
    assert!(matches!(&res.results[0].result, Some(Outcome::Error(e)) if e.reason == "INVALID_FIELD"));
    let after = (h.snapshot().await, count(h, &format!("SELECT {tables}")).await);
    assert_eq!(before, after, "refused calls wrote nothing");

    // Operations are the organization's own; assigning needs `enrollments:write`.
    let op = assign(&mut c, &g.id, assignment::Target::PublishedCourseId(w.published[0].id.clone())).await.unwrap();
    assert_err(o.groups.get_operation(GetOperationRequest { id: op.id.clone() }).await, nf, "NOT_FOUND");
    let people = h.scoped_key(&["users:write"]).await;
    let mut p = h.clients_with(&people);
    let course = assignment::Target::PublishedCourseId(w.published[1].id.clone());
    assert_err(assign(&mut p, &g.id, course).await, Code::PermissionDenied, "SCOPE_MISSING");
    finished(&mut c, &op).await;
}

crate::backend_tests!(membership_fans_out_to_enrollments_once, group_rules_bad_input_and_isolation);

/// 2,000 members assigned a 3-course path: 6,000 course enrollments and 2,000 path
/// enrollments, each exactly once with its event (the limit is raised for the set-up calls;
/// the fan-out itself is not counted against it).
async fn two_thousand_members_get_a_three_course_path_once(h: &Harness) {
    let mut c = h.clients();
    let w = path_world(&mut c).await;
    let g = group(&mut c, "Everyone").await;
    let writers = (0..4).map(|i| {
        let mut c = h.clients();
        async move { users(&mut c, &format!("w{i}-"), 500).await }
    });
    let members: Vec<String> = futures::future::join_all(writers).await.into_iter().flatten().collect();
    for chunk in members.chunks(1000) {
        add(&mut c, &g.id, chunk.to_vec()).await;
    }
    let op = assign(&mut c, &g.id, assignment::Target::LearningPathId(w.path.id.clone())).await.unwrap();
    let op = finished(&mut c, &op).await;
    assert_eq!((op.members_total, op.members_done, op.members_failed), (2000, 2000, 0));
    assert_eq!(each_enrollment_once(h).await, 6000);
    assert_eq!(count(h, "SELECT COUNT(*) FROM path_enrollments").await, 2000);
    assert_eq!(
        count(h, "SELECT COUNT(DISTINCT resource_id) FROM events WHERE type = 'path_enrollment.created'").await,
        2000
    );
}

mod at_scale {
    use crate::harness::{Backend, Harness, Limits};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let h = Harness::start_with(Backend::Sqlite, Limits::Memory, "100000/1m").await;
        super::two_thousand_members_get_a_three_course_path_once(&h).await;
    }

    #[cfg_attr(not(cw_postgres), ignore = "skipped: COURSEWIRE_TEST_DATABASE_URL is not set")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let h = Harness::start_with(Backend::Postgres, Limits::Memory, "100000/1m").await;
        super::two_thousand_members_get_a_three_course_path_once(&h).await;
    }
}

//! GroupService: groups of users, what is assigned to them, and the operations that enroll
//! members in it (`fanout`).
pub mod fanout;
mod store;

use std::sync::Arc;

use coursewire_proto::v1::group_service_server::GroupService;
use coursewire_proto::v1::membership_result::Result as Outcome;
use coursewire_proto::v1::operation::Kind;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::to_timestamp;
use crate::idempotency::Idempotency;
use crate::layers::auth::caller;
use crate::learning_paths::members::PATHS;
use crate::page::Page;
use crate::published_courses::PUBLISHED_COURSES;
use crate::resource::{check_etag, etag, item_error, mask_paths, opt_time};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::ids::{check_id, is_id, kind, new_id};
use coursewire_core::validate::Violations;
use store::*;

pub struct GroupApi(pub Arc<AppState>);

/// Users one AddGroupMembers / RemoveGroupMembers may carry.
pub const MAX_MEMBERS_PER_CALL: usize = 1000;

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::GROUP, id)
}

fn validate(g: &Group, v: &mut Violations) {
    v.text("group.name", &g.name, 200);
    v.optional_text("group.description", &g.description, 10_000);
}

/// A membership change's event: the membership's own id, at `sequence` (1 added, 2 removed).
async fn record_membership(
    conn: &mut AnyConnection,
    org: &str,
    action: &str,
    (id, sequence): (&str, i64),
    m: &GroupMembership,
    now: i64,
) -> ApiResult<()> {
    let kind = format!("group_membership.{action}");
    let change = coursewire_core::events::Change { org, kind: &kind, resource_id: id, sequence, data: m, now };
    coursewire_core::events::record(conn, change).await.map(|_| ())
}

/// Bumps the group's sequence for a change to its assignments, with its `group.updated`.
async fn touch_group(conn: &mut AnyConnection, org: &str, id: &str, now: i64) -> ApiResult<Group> {
    sqlx::query("UPDATE user_groups SET updated_at = $1, sequence = sequence + 1 WHERE id = $2 AND org_id = $3")
        .bind(now)
        .bind(id)
        .bind(org)
        .execute(&mut *conn)
        .await?;
    let (group, sequence) = fetch_group(conn, org, id).await?;
    GROUPS.record(conn, org, "updated", (id, sequence), &group, now).await?;
    Ok(group)
}

impl GroupApi {
    /// Adds one user to the group (inside the caller's savepoint).
    async fn add_member(
        conn: &mut AnyConnection,
        org: &str,
        group_id: &str,
        user_id: &str,
        operation_id: Option<&str>,
        now: i64,
    ) -> ApiResult<GroupMembership> {
        crate::users::fetch(&mut *conn, org, user_id).await?;
        let member: Option<String> = sqlx::query_scalar(
            "SELECT id FROM group_members WHERE group_id = $1 AND user_id = $2 AND removed_at IS NULL",
        )
        .bind(group_id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
        if member.is_some() {
            return Err(ApiError::new(Reason::GroupMemberExists, "the user is already a member of this group"));
        }
        let id = new_id(kind::GROUP_MEMBER);
        sqlx::query(
            "INSERT INTO group_members (id, group_id, user_id, added_at, operation_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(group_id)
        .bind(user_id)
        .bind(now)
        .bind(operation_id)
        .execute(&mut *conn)
        .await?;
        let m = GroupMembership {
            group_id: group_id.into(),
            user_id: user_id.into(),
            added_at: Some(to_timestamp(now)),
            removed_at: None,
        };
        record_membership(conn, org, "created", (&id, 1), &m, now).await?;
        Ok(m)
    }

    async fn remove_member(
        conn: &mut AnyConnection,
        org: &str,
        group_id: &str,
        user_id: &str,
        now: i64,
    ) -> ApiResult<GroupMembership> {
        let row = sqlx::query(
            "SELECT id, group_id, user_id, added_at, removed_at FROM group_members \
             WHERE group_id = $1 AND user_id = $2 AND removed_at IS NULL",
        )
        .bind(group_id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::not_found("group member", user_id))?;
        let id: String = sqlx::Row::try_get(&row, "id")?;
        let done = sqlx::query("UPDATE group_members SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL")
            .bind(now)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("group member", user_id));
        }
        let mut m = membership_from_row(&row)?;
        m.removed_at = Some(to_timestamp(now));
        record_membership(conn, org, "deleted", (&id, 2), &m, now).await?;
        Ok(m)
    }
}

/// The ids of a membership call: the group, and 1 to 1,000 user ids (checked per item).
fn check_members(group_id: &str, user_ids: &[String]) -> ApiResult<()> {
    let mut v = Violations::default();
    check_id(&mut v, "group_id", kind::GROUP, group_id);
    v.check((1..=MAX_MEMBERS_PER_CALL).contains(&user_ids.len()), "user_ids", "must hold 1 to 1000 user ids");
    v.finish()
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    async fn create_group(&self, req: Request<CreateGroupRequest>) -> Result<Response<Group>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut g = r.group.clone().unwrap_or_default();
        let mut v = Violations::default();
        validate(&g, &mut v);
        v.check(g.assignments.is_empty(), "group.assignments", "must be empty on create (use AssignToGroup)");
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateGroup", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        g.id = new_id(kind::GROUP);
        g.created_at = Some(to_timestamp(now));
        g.updated_at = g.created_at;
        g.member_count = 0;
        g.etag = etag(1);
        GROUPS.insert(&mut tx, who.org(), &g.id, now, &[("name", &g.name), ("description", &g.description)]).await?;
        GROUPS.record(&mut tx, who.org(), "created", (&g.id, 1), &g, now).await?;
        Idempotency::save(&idem, &mut tx, &g, now).await?;
        tx.commit().await?;
        Ok(Response::new(g))
    }

    async fn get_group(&self, req: Request<GetGroupRequest>) -> Result<Response<Group>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        Ok(Response::new(fetch_group(&mut conn, who.org(), &req.get_ref().id).await?.0))
    }

    async fn list_groups(&self, req: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &format!("groups|{}", who.org()))?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        let rows = GROUPS.page(&mut *conn, who.org(), &page).await?;
        let mut groups = rows
            .iter()
            .map(|r| group_from_row(r).map(|g| g.0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut groups, |g| &g.id);
        for g in &mut groups {
            g.assignments =
                assignments_of(&mut conn, &g.id).await?.into_iter().map(|(t, due)| assignment(t, due)).collect();
        }
        Ok(Response::new(ListGroupsResponse { groups, next_page_token }))
    }

    async fn update_group(&self, req: Request<UpdateGroupRequest>) -> Result<Response<Group>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.group.unwrap_or_default();
        check("group.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), &["name", "description"])?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut g, seq) = fetch_group(&mut tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, GROUPS.kind)?;
        for field in &paths {
            match *field {
                "name" => g.name = patch.name.clone(),
                _ => g.description = patch.description.clone(),
            }
        }
        let mut v = Violations::default();
        validate(&g, &mut v);
        v.finish()?;
        let columns = [("name", g.name.as_str()), ("description", &g.description)];
        GROUPS.update(&mut tx, who.org(), (&g.id, seq), now, &columns).await?;
        g.etag = etag(seq + 1);
        g.updated_at = Some(to_timestamp(now));
        GROUPS.record(&mut tx, who.org(), "updated", (&g.id, seq + 1), &g, now).await?;
        tx.commit().await?;
        Ok(Response::new(g))
    }

    async fn delete_group(&self, req: Request<DeleteGroupRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut g, seq) = fetch_group(&mut tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, GROUPS.kind)?;
        if g.member_count > 0 {
            return Err(ApiError::new(Reason::GroupHasMembers, format!("the group has {} member(s)", g.member_count))
                .help("remove its members (GroupService.RemoveGroupMembers) first")
                .into());
        }
        // Removed memberships are kept for history until their group goes.
        sqlx::query("DELETE FROM group_members WHERE group_id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        GROUPS.delete(&mut tx, who.org(), &r.id, seq).await?;
        g.etag = etag(seq + 1);
        GROUPS.record(&mut tx, who.org(), "deleted", (&g.id, seq + 1), &g, now).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }

    async fn add_group_members(
        &self,
        req: Request<AddGroupMembersRequest>,
    ) -> Result<Response<AddGroupMembersResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_members(&r.group_id, &r.user_ids)?;
        let idem = Idempotency::new(who.org(), &r.request_id, "AddGroupMembers", &r)?;
        let verdict = self.0.limiter.admit_items(&who, r.user_ids.len()).await?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(done) = Idempotency::replay(&idem, &mut tx, now).await? {
            return Ok(Response::new(done));
        }
        fetch_group(&mut tx, who.org(), &r.group_id).await?;
        // New members are enrolled by one operation, when there is anything to enroll in.
        let assigned = !assignments_of(&mut tx, &r.group_id).await?.is_empty();
        let operation_id = assigned.then(|| new_id(kind::OPERATION));
        let mut results = Vec::with_capacity(r.user_ids.len());
        let mut added = 0;
        for (i, user_id) in r.user_ids.iter().enumerate() {
            let outcome = if !is_id(kind::USER, user_id) {
                Err(ApiError::field(&format!("user_ids[{i}]"), "must be an id starting with `usr_`"))
            } else {
                let mut sp = tx.savepoint().await?;
                match Self::add_member(&mut sp, who.org(), &r.group_id, user_id, operation_id.as_deref(), now).await {
                    Ok(m) => sp.commit().await.map(|_| m).map_err(ApiError::from),
                    Err(e) => {
                        sp.rollback().await.map_err(ApiError::from)?;
                        Err(e)
                    }
                }
            };
            added += usize::from(outcome.is_ok());
            results.push(MembershipResult {
                result: Some(match outcome {
                    Ok(m) => Outcome::Membership(m),
                    Err(e) => Outcome::Error(item_error(e)),
                }),
            });
        }
        let operation = match operation_id.filter(|_| added > 0) {
            Some(id) => {
                let op = NewOperation {
                    id: &id,
                    kind: Kind::EnrollNewMembers,
                    group_id: &r.group_id,
                    target_id: None,
                    members_total: added as i64,
                };
                Some(start_operation(&mut tx, who.org(), op, now).await?)
            }
            None => None,
        };
        let response = AddGroupMembersResponse { results, operation };
        Idempotency::save(&idem, &mut tx, &response, now).await?;
        tx.commit().await?;
        self.0.fanout.notify_one();
        let mut response = Response::new(response);
        if let Some(v) = verdict {
            v.headers(response.metadata_mut().as_mut());
        }
        Ok(response)
    }

    async fn remove_group_members(
        &self,
        req: Request<RemoveGroupMembersRequest>,
    ) -> Result<Response<RemoveGroupMembersResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        check_members(&r.group_id, &r.user_ids)?;
        let verdict = self.0.limiter.admit_items(&who, r.user_ids.len()).await?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        fetch_group(&mut tx, who.org(), &r.group_id).await?;
        let mut results = Vec::with_capacity(r.user_ids.len());
        for (i, user_id) in r.user_ids.iter().enumerate() {
            let outcome = if !is_id(kind::USER, user_id) {
                Err(ApiError::field(&format!("user_ids[{i}]"), "must be an id starting with `usr_`"))
            } else {
                Self::remove_member(&mut tx, who.org(), &r.group_id, user_id, now).await
            };
            results.push(MembershipResult {
                result: Some(match outcome {
                    Ok(m) => Outcome::Membership(m),
                    Err(e) => Outcome::Error(item_error(e)),
                }),
            });
        }
        tx.commit().await?;
        let mut response = Response::new(RemoveGroupMembersResponse { results });
        if let Some(v) = verdict {
            v.headers(response.metadata_mut().as_mut());
        }
        Ok(response)
    }

    async fn list_group_members(
        &self,
        req: Request<ListGroupMembersRequest>,
    ) -> Result<Response<ListGroupMembersResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("group_id", &r.group_id)?;
        let scope = format!("group_members|{}|{}", who.org(), r.group_id);
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &scope)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        GROUPS.get(&mut *conn, who.org(), &r.group_id).await?;
        // Live members in user id order (the page token holds the last user id).
        let rows = sqlx::query(
            "SELECT group_id, user_id, added_at, removed_at FROM group_members \
             WHERE group_id = $1 AND removed_at IS NULL AND user_id > $2 ORDER BY user_id LIMIT $3",
        )
        .bind(&r.group_id)
        .bind(&page.after)
        .bind(page.limit())
        .fetch_all(&mut *conn)
        .await
        .map_err(ApiError::from)?;
        let mut members =
            rows.iter().map(membership_from_row).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut members, |m| &m.user_id);
        Ok(Response::new(ListGroupMembersResponse { members, next_page_token }))
    }

    async fn assign_to_group(&self, req: Request<AssignToGroupRequest>) -> Result<Response<Operation>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let now = self.0.clock.now_ms();
        let a = r.assignment.unwrap_or_default();
        let target = target_id(&a).to_string();
        let mut v = Violations::default();
        check_id(&mut v, "group_id", kind::GROUP, &r.group_id);
        match &a.target {
            Some(assignment::Target::PublishedCourseId(id)) => {
                check_id(&mut v, "assignment.published_course_id", kind::PUBLISHED_COURSE, id)
            }
            Some(assignment::Target::LearningPathId(id)) => {
                check_id(&mut v, "assignment.learning_path_id", kind::LEARNING_PATH, id)
            }
            None => v.add("assignment", "needs a published_course_id or a learning_path_id"),
        }
        let due_at = opt_time(&mut v, "assignment.due_at", a.due_at.as_ref());
        v.check(due_at.is_none_or(|t| t > now), "assignment.due_at", "must be in the future");
        v.finish()?;
        let mut tx = self.0.db.begin().await?;
        fetch_group(&mut tx, who.org(), &r.group_id).await?;
        let table = if target.starts_with("pth_") { &PATHS } else { &PUBLISHED_COURSES };
        table.get(&mut *tx, who.org(), &target).await?;
        sqlx::query(
            "INSERT INTO group_assignments (group_id, target_id, due_at, assigned_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (group_id, target_id) DO UPDATE SET due_at = excluded.due_at",
        )
        .bind(&r.group_id)
        .bind(&target)
        .bind(due_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let group = touch_group(&mut tx, who.org(), &r.group_id, now).await?;
        let id = new_id(kind::OPERATION);
        let op = NewOperation {
            id: &id,
            kind: Kind::EnrollAssignment,
            group_id: &r.group_id,
            target_id: Some(&target),
            members_total: group.member_count,
        };
        let op = start_operation(&mut tx, who.org(), op, now).await?;
        tx.commit().await?;
        self.0.fanout.notify_one();
        Ok(Response::new(op))
    }

    async fn unassign_from_group(&self, req: Request<UnassignFromGroupRequest>) -> Result<Response<Group>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        check_id(&mut v, "group_id", kind::GROUP, &r.group_id);
        v.check(
            is_id(kind::PUBLISHED_COURSE, &r.target_id) || is_id(kind::LEARNING_PATH, &r.target_id),
            "target_id",
            "must be a pub_ or pth_ id",
        );
        v.finish()?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        fetch_group(&mut tx, who.org(), &r.group_id).await?;
        let done = sqlx::query("DELETE FROM group_assignments WHERE group_id = $1 AND target_id = $2")
            .bind(&r.group_id)
            .bind(&r.target_id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("group assignment", &r.target_id).into());
        }
        let group = touch_group(&mut tx, who.org(), &r.group_id, now).await?;
        tx.commit().await?;
        Ok(Response::new(group))
    }

    async fn get_operation(&self, req: Request<GetOperationRequest>) -> Result<Response<Operation>, Status> {
        let who = caller(&req)?;
        coursewire_core::ids::require("id", kind::OPERATION, &req.get_ref().id)?;
        let row = OPERATIONS.get(self.0.db.pool(), who.org(), &req.get_ref().id).await?;
        Ok(Response::new(operation_from_row(&row)?))
    }
}

//! Group rows: groups with their assignments, memberships, and operations.
use coursewire_proto::v1::assignment::Target;
use coursewire_proto::v1::operation::Kind;
use coursewire_proto::v1::{Assignment, Group, GroupMembership, ItemError, Operation};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::clock::{opt_timestamp, to_timestamp};
use crate::resource::{Table, etag};
use coursewire_core::error::{ApiError, ApiResult};

pub const GROUPS: Table = Table {
    name: "user_groups",
    kind: "group",
    events: "group",
    columns: "id, name, description, created_at, updated_at, sequence, \
              (SELECT COUNT(*) FROM group_members m WHERE m.group_id = user_groups.id AND m.removed_at IS NULL) \
              AS member_count",
};

pub const OPERATIONS: Table = Table {
    name: "operations",
    kind: "operation",
    events: "operation",
    columns: "id, kind, group_id, members_total, members_done, members_failed, first_error, \
              created_at, updated_at, done_at",
};

pub fn group_from_row(r: &AnyRow) -> Result<(Group, i64), sqlx::Error> {
    let sequence = r.try_get("sequence")?;
    let group = Group {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        assignments: Vec::new(),
        member_count: r.try_get("member_count")?,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        etag: etag(sequence),
    };
    Ok((group, sequence))
}

/// An assignment's target id: `pub_…` or `pth_…`.
pub fn target_id(a: &Assignment) -> &str {
    match &a.target {
        Some(Target::PublishedCourseId(id)) | Some(Target::LearningPathId(id)) => id,
        None => "",
    }
}

pub fn assignment(target_id: String, due_at: Option<i64>) -> Assignment {
    let target = if target_id.starts_with("pth_") {
        Target::LearningPathId(target_id)
    } else {
        Target::PublishedCourseId(target_id)
    };
    Assignment { target: Some(target), due_at: opt_timestamp(due_at) }
}

/// The group's assignments as (target id, due_at), in the order assigned.
pub async fn assignments_of(conn: &mut AnyConnection, group_id: &str) -> ApiResult<Vec<(String, Option<i64>)>> {
    Ok(sqlx::query_as(
        "SELECT target_id, due_at FROM group_assignments WHERE group_id = $1 ORDER BY assigned_at, target_id",
    )
    .bind(group_id)
    .fetch_all(conn)
    .await?)
}

/// Group `id` of `org` with its assignments, and its sequence.
pub async fn fetch_group(conn: &mut AnyConnection, org: &str, id: &str) -> ApiResult<(Group, i64)> {
    let (mut group, sequence) = group_from_row(&GROUPS.get(&mut *conn, org, id).await?)?;
    group.assignments =
        assignments_of(conn, id).await?.into_iter().map(|(target, due)| assignment(target, due)).collect();
    Ok((group, sequence))
}

pub fn membership_from_row(r: &AnyRow) -> Result<GroupMembership, sqlx::Error> {
    Ok(GroupMembership {
        group_id: r.try_get("group_id")?,
        user_id: r.try_get("user_id")?,
        added_at: Some(to_timestamp(r.try_get("added_at")?)),
        removed_at: opt_timestamp(r.try_get("removed_at")?),
    })
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::EnrollAssignment => "ENROLL_ASSIGNMENT",
        _ => "ENROLL_NEW_MEMBERS",
    }
}

pub fn operation_from_row(r: &AnyRow) -> Result<Operation, ApiError> {
    let kind = if r.try_get::<String, _>("kind")? == "ENROLL_ASSIGNMENT" {
        Kind::EnrollAssignment
    } else {
        Kind::EnrollNewMembers
    };
    let first_error: Option<String> = r.try_get("first_error")?;
    let first_error = match first_error {
        Some(json) => Some(serde_json::from_str::<ItemError>(&json).map_err(ApiError::internal)?),
        None => None,
    };
    let done_at: Option<i64> = r.try_get("done_at")?;
    Ok(Operation {
        id: r.try_get("id")?,
        kind: kind as i32,
        group_id: r.try_get("group_id")?,
        done: done_at.is_some(),
        members_total: r.try_get("members_total")?,
        members_done: r.try_get("members_done")?,
        members_failed: r.try_get("members_failed")?,
        first_error,
        created_at: Some(to_timestamp(r.try_get("created_at")?)),
        updated_at: Some(to_timestamp(r.try_get("updated_at")?)),
        done_at: opt_timestamp(done_at),
    })
}

/// An operation to start.
pub struct NewOperation<'a> {
    pub id: &'a str,
    pub kind: Kind,
    pub group_id: &'a str,
    /// The assignment an ENROLL_ASSIGNMENT operation enrolls in.
    pub target_id: Option<&'a str>,
    pub members_total: i64,
}

/// Records an operation; the fan-out worker picks it up once the transaction commits.
pub async fn start_operation(
    conn: &mut AnyConnection,
    org: &str,
    op: NewOperation<'_>,
    now: i64,
) -> ApiResult<Operation> {
    let NewOperation { id, kind, group_id, target_id, members_total } = op;
    sqlx::query(
        "INSERT INTO operations (id, org_id, kind, group_id, target_id, members_total, members_done, members_failed, \
         cursor, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, '', $7, $7)",
    )
    .bind(id)
    .bind(org)
    .bind(kind_name(kind))
    .bind(group_id)
    .bind(target_id)
    .bind(members_total)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    operation_from_row(&OPERATIONS.get(conn, org, id).await?)
}

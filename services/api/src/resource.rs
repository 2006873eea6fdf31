//! Small helpers every resource module shares: etags, update masks, timestamps.
use pbjson_types::FieldMask;
use sqlx::AnyConnection;

use crate::clock::from_timestamp;
use coursewire_core::error::{ApiError, ApiResult};
use coursewire_core::validate::Violations;

/// The etag of a resource at `sequence` (it changes with every write).
pub fn etag(sequence: i64) -> String {
    format!("\"{sequence}\"")
}

/// ABORTED when the caller sent an etag that is no longer current.
pub fn check_etag(sent: &str, sequence: i64, kind: &'static str) -> ApiResult<()> {
    if sent.is_empty() || sent == etag(sequence) { Ok(()) } else { Err(ApiError::etag_mismatch(kind)) }
}

/// The paths to update: those in the mask, or all of `allowed` when the mask is empty.
pub fn mask_paths(mask: Option<&FieldMask>, allowed: &[&'static str]) -> ApiResult<Vec<&'static str>> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(allowed.to_vec());
    };
    let mut out = Vec::new();
    for p in &mask.paths {
        match allowed.iter().find(|a| **a == p) {
            Some(a) => out.push(*a),
            None => {
                return Err(ApiError::field(
                    "update_mask",
                    format!("unknown or read-only path {p:?}; allowed: {}", allowed.join(", ")),
                ));
            }
        }
    }
    Ok(out)
}

/// An optional timestamp field as epoch ms, recording a violation when out of range.
pub fn opt_time(v: &mut Violations, field: &str, t: Option<&pbjson_types::Timestamp>) -> Option<i64> {
    let ms = t.map(from_timestamp)?;
    if ms.is_none() {
        v.add(field, "is out of range");
    }
    ms
}

/// Deletes `id` from `table` (an organization's resource) only if it is still at `sequence`,
/// the one its caller read. Otherwise a concurrent write moved it on (and its event took the
/// next sequence): ABORTED / ETAG_MISMATCH, so no two events ever share a sequence.
pub async fn delete_at(
    conn: &mut AnyConnection,
    table: &'static str,
    kind: &'static str,
    org: &str,
    id: &str,
    sequence: i64,
) -> ApiResult<()> {
    let sql = format!("DELETE FROM {table} WHERE id = $1 AND org_id = $2 AND sequence = $3");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(org).bind(sequence).execute(conn).await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::etag_mismatch(kind));
    }
    Ok(())
}

/// A per-item failure of a batch (or of a fan-out), with the code and reason the same
/// single call would have failed with.
pub fn item_error(e: ApiError) -> coursewire_proto::v1::ItemError {
    coursewire_proto::v1::ItemError {
        code: e.code as i32,
        reason: e.reason.as_str().into(),
        message: e.message,
        metadata: e.details.metadata,
    }
}

pub fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// One organization-owned table. Every query made through it is bound to the caller's
/// organization, so a resource module holds only its own columns, validation and rules, and
/// cannot forget the tenant.
pub struct Table {
    /// The SQL table, with `id`, `org_id` and `sequence` columns.
    pub name: &'static str,
    /// What errors call one row ("learning path").
    pub kind: &'static str,
    /// The event type prefix (`learning_path` → `learning_path.created`).
    pub events: &'static str,
    /// The columns a read selects.
    pub columns: &'static str,
}

impl Table {
    /// Row `id` of `org`, or NOT_FOUND.
    pub async fn get<'e>(
        &self,
        conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
        org: &str,
        id: &str,
    ) -> ApiResult<sqlx::any::AnyRow> {
        let sql = format!("SELECT {} FROM {} WHERE id = $1 AND org_id = $2", self.columns, self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(org)
            .fetch_optional(conn)
            .await?
            .ok_or_else(|| ApiError::not_found(self.kind, id))
    }

    /// One page of `org`'s rows in id order (one extra row tells whether another page exists).
    pub async fn page<'e>(
        &self,
        conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
        org: &str,
        page: &crate::page::Page,
    ) -> ApiResult<Vec<sqlx::any::AnyRow>> {
        let sql =
            format!("SELECT {} FROM {} WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3", self.columns, self.name);
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org).bind(&page.after).bind(page.limit()).fetch_all(conn).await?)
    }

    /// Inserts row `id` of `org` at sequence 1, created and updated `now`, with the text
    /// `columns` (name, value) given.
    pub async fn insert(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        id: &str,
        now: i64,
        columns: &[(&'static str, &str)],
    ) -> ApiResult<()> {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let marks: Vec<String> = (0..columns.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "INSERT INTO {} (id, org_id, created_at, updated_at, sequence, {}) VALUES ($1, $2, $3, $3, 1, {})",
            self.name,
            names.join(", "),
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(org).bind(now);
        for (_, value) in columns {
            q = q.bind(*value);
        }
        q.execute(conn).await?;
        Ok(())
    }

    /// Sets the text `columns` of row `id` of `org` if it is still at `sequence` (the one its
    /// caller read; else ABORTED / ETAG_MISMATCH), moving it to the next sequence.
    pub async fn update(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        (id, sequence): (&str, i64),
        now: i64,
        columns: &[(&'static str, &str)],
    ) -> ApiResult<()> {
        let sets: Vec<String> =
            columns.iter().enumerate().map(|(i, (name, _))| format!("{name} = ${}", i + 5)).collect();
        let sql = format!(
            "UPDATE {} SET {}updated_at = $1, sequence = sequence + 1 WHERE id = $2 AND org_id = $3 AND sequence = $4",
            self.name,
            sets.iter().map(|s| format!("{s}, ")).collect::<String>(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(id).bind(org).bind(sequence);
        for (_, value) in columns {
            q = q.bind(*value);
        }
        if q.execute(conn).await?.rows_affected() == 0 {
            return Err(ApiError::etag_mismatch(self.kind));
        }
        Ok(())
    }

    /// Deletes row `id` if it is still at `sequence` (see `delete_at`).
    pub async fn delete(&self, conn: &mut AnyConnection, org: &str, id: &str, sequence: i64) -> ApiResult<()> {
        delete_at(conn, self.name, self.kind, org, id, sequence).await
    }

    /// Records `<events>.<action>` of row `id` at `sequence`, in the caller's transaction.
    pub async fn record<T: serde::Serialize>(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        action: &str,
        (id, sequence): (&str, i64),
        data: &T,
        now: i64,
    ) -> ApiResult<()> {
        let kind = format!("{}.{action}", self.events);
        let change = coursewire_core::events::Change { org, kind: &kind, resource_id: id, sequence, data, now };
        coursewire_core::events::record(conn, change).await.map(|_| ())
    }
}

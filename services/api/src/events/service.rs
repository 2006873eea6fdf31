//! EventService: reads the organization's event log.
use std::sync::Arc;

use coursewire_proto::v1::event_service_server::EventService;
use coursewire_proto::v1::{
    Event, EventType, GetEventRequest, ListEventTypesRequest, ListEventTypesResponse, ListEventsRequest,
    ListEventsResponse, WatchEventsRequest,
};
use sqlx::Row;
use tonic::{Request, Response, Status};

use tokio_stream::wrappers::ReceiverStream;

use super::log::{COLUMNS, event_from_row, type_terms};
use crate::AppState;
use crate::clock::from_timestamp;
use crate::layers::auth::caller;
use crate::page::Page;
use coursewire_core::error::{ApiError, ApiResult};
use coursewire_core::events::{Mark, in_order};
use coursewire_core::ids::{check_id, kind};
use coursewire_core::validate::Violations;

pub struct EventApi(pub Arc<AppState>);

fn check_types(v: &mut Violations, types: &[String]) {
    v.check(types.len() <= 50, "types", "at most 50 types");
    for t in types {
        v.check(
            valid_type_filter(t),
            "types",
            "each must be an event type like `enrollment.completed` or `enrollment.*`",
        );
    }
}

/// `enrollment.completed` or a prefix pattern `enrollment.*`.
fn valid_type_filter(t: &str) -> bool {
    let base = t.strip_suffix(".*").unwrap_or(t);
    !base.is_empty() && base.len() <= 100 && base.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn list_events(&self, req: Request<ListEventsRequest>) -> Result<Response<ListEventsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        v.check(r.types.len() <= 50, "types", "at most 50 types");
        for t in &r.types {
            v.check(
                valid_type_filter(t),
                "types",
                "each must be an event type like `enrollment.completed` or `enrollment.*`",
            );
        }
        let created_after = r.created_after.as_ref().map(from_timestamp);
        v.check(created_after != Some(None), "created_after", "is out of range");
        if !r.resource_id.is_empty() {
            v.optional_text("resource_id", &r.resource_id, 64);
        }
        v.finish()?;
        let scope = format!("events|{}|{:?}|{}|{:?}", who.org(), r.types, r.resource_id, created_after);
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &scope)?;

        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE org_id = $1 AND id > $2");
        let mut binds: Vec<String> = vec![who.org().to_string(), page.after.clone()];
        sql.push_str(&type_terms(&r.types, &mut binds));
        if !r.resource_id.is_empty() {
            binds.push(r.resource_id.clone());
            sql.push_str(&format!(" AND resource_id = ${}", binds.len()));
        }
        let after = created_after.flatten().unwrap_or(i64::MIN);
        sql.push_str(&format!(" AND created_at > ${} ORDER BY id LIMIT ${}", binds.len() + 1, binds.len() + 2));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.bind(after).bind(page.limit()).fetch_all(self.0.db.pool()).await.map_err(ApiError::from)?;
        let mut events = rows.iter().map(event_from_row).collect::<ApiResult<Vec<_>>>()?;
        let next_page_token = page.finish(&mut events, |e| &e.id);
        Ok(Response::new(ListEventsResponse { events, next_page_token }))
    }

    async fn list_event_types(
        &self,
        _req: Request<ListEventTypesRequest>,
    ) -> Result<Response<ListEventTypesResponse>, Status> {
        let as_struct = |v: &serde_json::Value| serde_json::from_value(v.clone()).map_err(ApiError::internal);
        let event_types = super::catalogue::catalogue()
            .iter()
            .map(|t| {
                Ok(EventType {
                    name: t.name.clone(),
                    description: t.when.clone(),
                    payload: t.payload.clone(),
                    data_schema: Some(as_struct(&t.data_schema)?),
                    example: Some(as_struct(&t.example)?),
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(Response::new(ListEventTypesResponse { event_types }))
    }

    async fn get_event(&self, req: Request<GetEventRequest>) -> Result<Response<Event>, Status> {
        let who = caller(&req)?;
        let id = &req.get_ref().id;
        let mut v = Violations::default();
        check_id(&mut v, "id", kind::EVENT, id);
        v.finish()?;
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM events WHERE id = $1 AND org_id = $2")))
                .bind(id)
                .bind(who.org())
                .fetch_optional(self.0.db.pool())
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::not_found("event", id))?;
        Ok(Response::new(event_from_row(&row)?))
    }

    type WatchEventsStream = ReceiverStream<Result<Event, Status>>;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        check_types(&mut v, &r.types);
        if !r.after_event_id.is_empty() {
            check_id(&mut v, "after_event_id", kind::EVENT, &r.after_event_id);
        }
        v.finish()?;
        let permit = self.0.streams.open(who.org())?;
        let in_order = in_order(self.0.db.backend);
        let start = if !r.after_event_id.is_empty() {
            let sql = format!(
                "SELECT txid, CASE WHEN {in_order} THEN 1 ELSE 0 END AS ready FROM events WHERE id = $1 AND org_id = $2"
            );
            let found: Option<(i64, bool)> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&r.after_event_id)
                .bind(who.org())
                .fetch_optional(self.0.db.pool())
                .await
                .and_then(|row| row.map(|r| Ok((r.try_get("txid")?, r.try_get::<i64, _>("ready")? == 1))).transpose())
                .map_err(ApiError::from)?;
            match found {
                None => return Err(ApiError::not_found("event", &r.after_event_id).into()),
                Some((_, false)) => {
                    return Err(ApiError::unavailable("that event is not in order yet; retry in a moment").into());
                }
                Some((txid, true)) => Mark { txid, id: r.after_event_id.clone() },
            }
        } else if r.from_start {
            Mark::start()
        } else {
            // Live: after the last event already in order.
            let sql = format!("SELECT txid, id FROM events WHERE {in_order} ORDER BY txid DESC, id DESC LIMIT 1");
            let last: Option<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_optional(self.0.db.pool())
                .await
                .map_err(ApiError::from)?;
            last.map_or_else(Mark::start, |(txid, id)| Mark { txid, id })
        };
        Ok(Response::new(super::watch::stream(self.0.clone(), permit, r.types, start)))
    }
}

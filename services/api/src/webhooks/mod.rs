//! WebhookService: partner endpoints, their secrets, and the deliveries the dispatcher makes.
//! The dispatcher (crate coursewire-dispatcher) reads and writes the same tables.
pub mod deliveries;
pub mod endpoint;

use std::sync::Arc;

use coursewire_proto::v1::webhook_service_server::WebhookService;
use coursewire_proto::v1::*;
use pbjson_types::Empty;
use serde_json::json;
use sqlx::{AnyConnection, Row};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::clock::{opt_timestamp, to_timestamp};
use crate::idempotency::Idempotency;
use crate::layers::auth::{Caller, caller};
use crate::page::Page;
use crate::resource::{check_etag, etag, mask_paths, opt_time};
use coursewire_core::activity::{self, action};
use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::events::{self, Change};
use coursewire_core::ids::{kind, new_id};
use coursewire_core::store::Tx;
use coursewire_core::validate::Violations;
use deliveries::{FAILED, MAX_REPLAY, NewDelivery, PENDING, SUCCEEDED};
use endpoint::{REDACTED, ROTATION_OVERLAP_MS, fetch, new_secret, seal_headers, secret_context, validate};

pub struct WebhookApi(pub Arc<AppState>);

impl WebhookApi {
    /// The endpoint's signing secrets in clear: the current one, and the previous one while
    /// it still signs (rotation overlap).
    async fn secrets(&self, conn: &mut AnyConnection, org: &str, id: &str, now: i64) -> ApiResult<WebhookSecret> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_expires_at FROM webhook_endpoints WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", id))?;
        let context = secret_context(id);
        let open = |sealed: &str| self.0.secrets.open(sealed, &context).map_err(ApiError::internal);
        let live = row.try_get::<Option<i64>, _>("previous_expires_at")?.filter(|t| *t > now);
        let previous = match (live, row.try_get::<Option<String>, _>("previous_secret")?) {
            (Some(_), Some(sealed)) => open(&sealed)?,
            _ => String::new(),
        };
        Ok(WebhookSecret {
            secret: open(&row.try_get::<String, _>("secret")?)?,
            previous_secret: previous,
            previous_expires_at: opt_timestamp(live),
        })
    }
}

const MUTABLE: &[&str] = &["url", "description", "event_types", "headers", "max_rate_per_second", "max_concurrency"];

fn check(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::WEBHOOK, id)
}

fn check_delivery(field: &str, id: &str) -> ApiResult<()> {
    coursewire_core::ids::require(field, kind::DELIVERY, id)
}

fn disabled_error(id: &str) -> ApiError {
    ApiError::new(Reason::WebhookDisabled, format!("webhook {id} is disabled"))
        .help("enable it first (WebhookService.EnableWebhook)")
}

/// Bumps the endpoint's event counter and returns it: the `sequence` of its next event.
async fn next_event_sequence(tx: &mut Tx, id: &str) -> ApiResult<i64> {
    sqlx::query("UPDATE webhook_endpoints SET event_sequence = event_sequence + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query_scalar("SELECT event_sequence FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?)
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds the settings a caller chooses, in column order: url, description, event_types,
/// headers (sealed), max_rate, max_concurrency (Create and Update store the same ones).
fn bind_settings<'q>(q: Query<'q>, w: &'q Webhook, sealed_headers: String) -> ApiResult<Query<'q>> {
    Ok(q.bind(&w.url)
        .bind(&w.description)
        .bind(serde_json::to_string(&w.event_types).map_err(ApiError::internal)?)
        .bind(sealed_headers)
        .bind(i64::from(w.max_rate_per_second))
        .bind(i64::from(w.max_concurrency)))
}

/// Enables an endpoint: its parked deliveries are due again, and dispatchers reload it.
async fn enable(tx: &mut Tx, org: &str, id: &str, now: i64) -> ApiResult<()> {
    sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = '', failing_since = NULL, updated_at = $3, \
         sequence = sequence + 1 WHERE id = $1 AND org_id = $2",
    )
    .bind(id)
    .bind(org)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    endpoint::park_deliveries(tx, id, false, now).await?;
    endpoint::changed(tx, org).await
}

/// Records who changed an endpoint (the activity log), in the change's transaction.
async fn log(tx: &mut Tx, who: &Caller, what: &str, id: &str, summary: &str, now: i64) -> ApiResult<()> {
    activity::record(tx, who.org(), &who.key.actor(), what, id, summary, now).await
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook(
        &self,
        req: Request<CreateWebhookRequest>,
    ) -> Result<Response<CreateWebhookResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut w = r.webhook.clone().unwrap_or_default();
        let mut v = Violations::default();
        validate(&mut w, &mut v);
        w.id = new_id(kind::WEBHOOK);
        let sealed_headers = seal_headers(&self.0.secrets, &w.id, &w.headers, &Default::default(), &mut v);
        v.finish()?;
        let idem = Idempotency::new(who.org(), &r.request_id, "CreateWebhook", &r)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        if let Some(mut done) = Idempotency::replay::<CreateWebhookResponse>(&idem, &mut tx, now).await? {
            // The stored response has no secret (it would sit in clear there): show the current one.
            let id = done.webhook.as_ref().map(|w| w.id.clone()).unwrap_or_default();
            done.secret = self.secrets(&mut tx, who.org(), &id, now).await?.secret;
            return Ok(Response::new(done));
        }
        w.created_at = Some(to_timestamp(now));
        w.updated_at = w.created_at;
        w.etag = etag(1);
        w.disabled = false;
        w.disabled_reason.clear();
        w.disabled_at = None;
        for value in w.headers.values_mut() {
            *value = REDACTED.into();
        }
        let secret = new_secret();
        let insert = sqlx::query(
            "INSERT INTO webhook_endpoints (id, org_id, url, description, event_types, headers, max_rate, \
             max_concurrency, secret, disabled_reason, sequence, event_sequence, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '', 1, 0, $10, $10)",
        )
        .bind(&w.id)
        .bind(who.org());
        bind_settings(insert, &w, sealed_headers)?
            .bind(self.0.secrets.seal(&secret, &secret_context(&w.id)))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        endpoint::changed(&mut tx, who.org()).await?;
        log(&mut tx, &who, action::WEBHOOK_CREATED, &w.id, &w.url, now).await?;
        let out = CreateWebhookResponse { webhook: Some(w), secret };
        let stored = CreateWebhookResponse { secret: String::new(), ..out.clone() };
        Idempotency::save(&idem, &mut tx, &stored, now).await?;
        tx.commit().await?;
        Ok(Response::new(out))
    }

    async fn get_webhook(&self, req: Request<GetWebhookRequest>) -> Result<Response<Webhook>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        Ok(Response::new(fetch(&mut conn, who.org(), &req.get_ref().id).await?.0))
    }

    async fn list_webhooks(&self, req: Request<ListWebhooksRequest>) -> Result<Response<ListWebhooksResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &format!("webhooks|{}", who.org()))?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            endpoint::COLUMNS
        )))
        .bind(who.org())
        .bind(&page.after)
        .bind(page.limit())
        .fetch_all(self.0.db.pool())
        .await
        .map_err(ApiError::from)?;
        let mut webhooks = rows
            .iter()
            .map(|r| endpoint::from_row(r).map(|w| w.0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut webhooks, |w| &w.id);
        Ok(Response::new(ListWebhooksResponse { webhooks, next_page_token }))
    }

    async fn update_webhook(&self, req: Request<UpdateWebhookRequest>) -> Result<Response<Webhook>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let patch = r.webhook.unwrap_or_default();
        check("webhook.id", &patch.id)?;
        let paths = mask_paths(r.update_mask.as_ref(), MUTABLE)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        let (mut w, seq) = fetch(&mut tx, who.org(), &patch.id).await?;
        check_etag(&patch.etag, seq, "webhook")?;
        for p in paths {
            match p {
                "url" => w.url = patch.url.clone(),
                "description" => w.description = patch.description.clone(),
                "event_types" => w.event_types = patch.event_types.clone(),
                "headers" => w.headers = patch.headers.clone(),
                "max_rate_per_second" => w.max_rate_per_second = patch.max_rate_per_second,
                _ => w.max_concurrency = patch.max_concurrency,
            }
        }
        let mut v = Violations::default();
        validate(&mut w, &mut v);
        let stored = endpoint::stored_headers(&mut tx, &w.id).await?;
        let sealed_headers = seal_headers(&self.0.secrets, &w.id, &w.headers, &stored, &mut v);
        v.finish()?;
        for value in w.headers.values_mut() {
            *value = REDACTED.into();
        }
        let update = sqlx::query(
            "UPDATE webhook_endpoints SET url = $3, description = $4, event_types = $5, headers = $6, max_rate = $7, \
             max_concurrency = $8, updated_at = $9, sequence = sequence + 1 WHERE id = $1 AND org_id = $2 AND sequence = $10",
        )
        .bind(&w.id)
        .bind(who.org());
        let done = bind_settings(update, &w, sealed_headers)?
            .bind(now)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if done.rows_affected() != 1 {
            return Err(ApiError::etag_mismatch("webhook").into());
        }
        endpoint::changed(&mut tx, who.org()).await?;
        log(&mut tx, &who, action::WEBHOOK_UPDATED, &w.id, &w.url, now).await?;
        tx.commit().await?;
        w.etag = etag(seq + 1);
        w.updated_at = Some(to_timestamp(now));
        Ok(Response::new(w))
    }

    async fn delete_webhook(&self, req: Request<DeleteWebhookRequest>) -> Result<Response<Empty>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let mut tx = self.0.db.begin().await?;
        let (gone, seq) = fetch(&mut tx, who.org(), &r.id).await?;
        check_etag(&r.etag, seq, "webhook")?;
        for sql in [
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1)",
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
            "DELETE FROM webhook_endpoints WHERE id = $1",
        ] {
            sqlx::query(sql).bind(&r.id).execute(&mut *tx).await.map_err(ApiError::from)?;
        }
        endpoint::changed(&mut tx, who.org()).await?;
        log(&mut tx, &who, action::WEBHOOK_DELETED, &r.id, &gone.url, self.0.clock.now_ms()).await?;
        tx.commit().await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_webhook_secret(
        &self,
        req: Request<GetWebhookSecretRequest>,
    ) -> Result<Response<WebhookSecret>, Status> {
        let who = caller(&req)?;
        check("id", &req.get_ref().id)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        Ok(Response::new(self.secrets(&mut conn, who.org(), &req.get_ref().id, self.0.clock.now_ms()).await?))
    }

    async fn rotate_webhook_secret(
        &self,
        req: Request<RotateWebhookSecretRequest>,
    ) -> Result<Response<WebhookSecret>, Status> {
        let who = caller(&req)?;
        let id = &req.get_ref().id;
        check("id", id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        fetch(&mut tx, who.org(), id).await?;
        let secret = new_secret();
        let expires = now + ROTATION_OVERLAP_MS;
        sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = $3, secret = $4, \
             updated_at = $5, sequence = sequence + 1 WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(who.org())
        .bind(expires)
        .bind(self.0.secrets.seal(&secret, &secret_context(id)))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        endpoint::changed(&mut tx, who.org()).await?;
        log(&mut tx, &who, action::WEBHOOK_SECRET_ROTATED, id, "signing secret rotated", now).await?;
        let shown = self.secrets(&mut tx, who.org(), id, now).await?;
        tx.commit().await?;
        Ok(Response::new(shown))
    }

    async fn enable_webhook(&self, req: Request<EnableWebhookRequest>) -> Result<Response<Webhook>, Status> {
        let who = caller(&req)?;
        let id = &req.get_ref().id;
        check("id", id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        tx.wake_dispatchers();
        fetch(&mut tx, who.org(), id).await?;
        enable(&mut tx, who.org(), id, now).await?;
        log(&mut tx, &who, action::WEBHOOK_ENABLED, id, "enabled", now).await?;
        let (w, _) = fetch(&mut tx, who.org(), id).await?;
        tx.commit().await?;
        Ok(Response::new(w))
    }

    async fn disable_webhook(&self, req: Request<DisableWebhookRequest>) -> Result<Response<Webhook>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check("id", &r.id)?;
        let mut v = Violations::default();
        v.optional_text("reason", &r.reason, 500);
        v.finish()?;
        let reason = if r.reason.trim().is_empty() { "disabled through the API" } else { r.reason.trim() };
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        fetch(&mut tx, who.org(), &r.id).await?;
        endpoint::disable(&mut tx, who.org(), &r.id, reason, now).await?;
        log(&mut tx, &who, action::WEBHOOK_DISABLED, &r.id, reason, now).await?;
        let (w, _) = fetch(&mut tx, who.org(), &r.id).await?;
        tx.commit().await?;
        Ok(Response::new(w))
    }

    async fn send_test_event(&self, req: Request<SendTestEventRequest>) -> Result<Response<Delivery>, Status> {
        let who = caller(&req)?;
        let id = &req.get_ref().id;
        check("id", id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        tx.wake_dispatchers();
        let (w, _) = fetch(&mut tx, who.org(), id).await?;
        if w.disabled {
            return Err(disabled_error(id).into());
        }
        let sequence = next_event_sequence(&mut tx, id).await?;
        let data = json!({"webhook_id": id, "message": "This is a test event from Coursewire."});
        let event_id = events::record(
            &mut tx,
            Change { org: who.org(), kind: "webhook.test", resource_id: id, sequence, data: &data, now },
        )
        .await?;
        let row = NewDelivery {
            org: who.org(),
            endpoint_id: id,
            event_id: &event_id,
            event_type: "webhook.test",
            origin: "",
        };
        deliveries::insert(&mut tx, &[row], now).await?;
        let delivery_id: String = sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE event_id = $1")
            .bind(&event_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        let d = deliveries::fetch(&mut tx, who.org(), &delivery_id).await?;
        tx.commit().await?;
        Ok(Response::new(d))
    }

    async fn list_deliveries(
        &self,
        req: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let mut v = Violations::default();
        if !r.webhook_id.is_empty() {
            coursewire_core::ids::check_id(&mut v, "webhook_id", kind::WEBHOOK, &r.webhook_id);
        }
        let state = match delivery::State::try_from(r.state) {
            Ok(delivery::State::Unspecified) => None,
            Ok(delivery::State::Pending) => Some(PENDING),
            Ok(delivery::State::Succeeded) => Some(SUCCEEDED),
            Ok(delivery::State::Failed) => Some(FAILED),
            Err(_) => {
                v.add("state", "is not a delivery state");
                None
            }
        };
        v.optional_text("event_type", &r.event_type, 100);
        let after = opt_time(&mut v, "created_after", r.created_after.as_ref());
        let before = opt_time(&mut v, "created_before", r.created_before.as_ref());
        let newest_first = match r.order_by.trim() {
            "" | "create_time" => false,
            "create_time desc" => true,
            _ => {
                v.add("order_by", "must be `create_time` or `create_time desc`");
                false
            }
        };
        v.finish()?;
        let scope = format!(
            "deliveries|{}|{}|{:?}|{}|{after:?}|{before:?}|{newest_first}",
            who.org(),
            r.webhook_id,
            state,
            r.event_type
        );
        let page = Page::new(&self.0.tokens, r.page_size, &r.page_token, &scope)?;
        let filter = deliveries::Filter {
            webhook_id: &r.webhook_id,
            state,
            event_type: &r.event_type,
            after,
            before,
            newest_first,
        };
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        let mut out = deliveries::list(&mut conn, who.org(), &filter, &page.after, page.limit()).await?;
        let next_page_token = page.finish(&mut out, |d| &d.id);
        Ok(Response::new(ListDeliveriesResponse { deliveries: out, next_page_token }))
    }

    async fn get_delivery(&self, req: Request<GetDeliveryRequest>) -> Result<Response<Delivery>, Status> {
        let who = caller(&req)?;
        check_delivery("id", &req.get_ref().id)?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        Ok(Response::new(deliveries::fetch(&mut conn, who.org(), &req.get_ref().id).await?))
    }

    async fn list_attempts(&self, req: Request<ListAttemptsRequest>) -> Result<Response<ListAttemptsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        check_delivery("delivery_id", &r.delivery_id)?;
        let page = Page::new(
            &self.0.tokens,
            r.page_size,
            &r.page_token,
            &format!("attempts|{}|{}", who.org(), r.delivery_id),
        )?;
        let mut conn = self.0.db.pool().acquire().await.map_err(ApiError::from)?;
        deliveries::fetch(&mut conn, who.org(), &r.delivery_id).await?;
        let rows = sqlx::query(
            "SELECT id, delivery_id, attempted_at, duration_ms, status, error, response_body FROM webhook_attempts \
             WHERE delivery_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(&r.delivery_id)
        .bind(&page.after)
        .bind(page.limit())
        .fetch_all(&mut *conn)
        .await
        .map_err(ApiError::from)?;
        let mut attempts =
            rows.iter().map(deliveries::attempt_from_row).collect::<Result<Vec<_>, _>>().map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut attempts, |a| &a.id);
        Ok(Response::new(ListAttemptsResponse { attempts, next_page_token }))
    }

    async fn retry_delivery(&self, req: Request<RetryDeliveryRequest>) -> Result<Response<Delivery>, Status> {
        let who = caller(&req)?;
        let id = &req.get_ref().id;
        check_delivery("id", id)?;
        let now = self.0.clock.now_ms();
        let mut tx = self.0.db.begin().await?;
        tx.wake_dispatchers();
        let d = deliveries::fetch(&mut tx, who.org(), id).await?;
        let (w, _) = fetch(&mut tx, who.org(), &d.webhook_id).await?;
        if w.disabled {
            return Err(disabled_error(&w.id).into());
        }
        // A pending delivery keeps its schedule and is only brought forward; a finished one
        // gets exactly one more attempt; one being attempted right now is left to that attempt.
        sqlx::query(
            "UPDATE webhook_deliveries SET single_attempt = CASE WHEN state = 'pending' THEN single_attempt ELSE 1 END, \
             state = 'pending', next_attempt_at = $2, updated_at = $2 \
             WHERE id = $1 AND NOT (state = 'pending' AND lease_owner <> '')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let d = deliveries::fetch(&mut tx, who.org(), id).await?;
        tx.commit().await?;
        Ok(Response::new(d))
    }

    async fn replay_events(&self, req: Request<ReplayEventsRequest>) -> Result<Response<ReplayEventsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let now = self.0.clock.now_ms();
        let mut v = Violations::default();
        coursewire_core::ids::check_id(&mut v, "webhook_id", kind::WEBHOOK, &r.webhook_id);
        let start = opt_time(&mut v, "start_time", r.start_time.as_ref());
        if r.start_time.is_none() {
            v.add("start_time", "is required");
        }
        let end = opt_time(&mut v, "end_time", r.end_time.as_ref()).unwrap_or(now);
        if start.is_some_and(|s| s >= end) {
            v.add("end_time", "must be after start_time");
        }
        v.finish()?;
        let start = start.unwrap_or_default();
        let mut tx = self.0.db.begin().await?;
        tx.wake_dispatchers();
        let (w, _) = fetch(&mut tx, who.org(), &r.webhook_id).await?;
        if w.disabled {
            return Err(disabled_error(&w.id).into());
        }
        // Text binds first ($1 org, $2 endpoint, then the endpoint's type filters), times last.
        let mut binds = vec![who.org().to_string(), w.id.clone()];
        let types = crate::events::type_terms(&w.event_types, &mut binds);
        let failed_only = " AND id IN (SELECT event_id FROM webhook_deliveries WHERE endpoint_id = $2 AND state = 'failed') \
             AND id NOT IN (SELECT event_id FROM webhook_deliveries WHERE endpoint_id = $2 AND state = 'succeeded')";
        let matching = format!(
            "FROM events WHERE org_id = $1 AND created_at >= ${} AND created_at < ${} AND type <> 'webhook.test'{types}{}",
            binds.len() + 1,
            binds.len() + 2,
            if r.only_failed { failed_only } else { "" }
        );
        let query = |select: String| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(select));
            for b in &binds {
                q = q.bind(b.clone());
            }
            q.bind(start).bind(end)
        };
        // Count first: a range over the cap is refused without loading it.
        let count: i64 = query(format!("SELECT COUNT(*) AS n {matching}"))
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("n"))
            .map_err(ApiError::from)?;
        if count > MAX_REPLAY as i64 {
            return Err(ApiError::new(
                Reason::ReplayTooLarge,
                format!("{count} events match; one replay sends at most {MAX_REPLAY}"),
            )
            .help("narrow start_time/end_time and replay in several calls")
            .into());
        }
        let rows = query(format!("SELECT id, type {matching} ORDER BY created_at, id LIMIT {MAX_REPLAY}"))
            .fetch_all(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        let events = rows
            .iter()
            .map(|row| Ok((row.try_get::<String, _>("id")?, row.try_get::<String, _>("type")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(ApiError::from)?;
        let origin = new_id(kind::REPLAY);
        let rows: Vec<NewDelivery> = events
            .iter()
            .map(|(id, kind)| NewDelivery {
                org: who.org(),
                endpoint_id: &w.id,
                event_id: id,
                event_type: kind,
                origin: &origin,
            })
            .collect();
        let created = deliveries::insert(&mut tx, &rows, now).await?;
        tx.commit().await?;
        Ok(Response::new(ReplayEventsResponse { delivery_count: created as i32 }))
    }
}

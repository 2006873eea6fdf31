//! `request_id` idempotency for creates (AIP-155): the same id with the same body returns
//! the stored response for 24 h; the same id with another body is INVALID_ARGUMENT.
//! The response is stored in the same transaction as the write it describes.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use coursewire_core::error::{ApiError, ApiResult, Reason};
use coursewire_core::store::{Tx, is_unique_violation};

const TTL_MS: i64 = 24 * 60 * 60 * 1000;

pub struct Idempotency {
    org: String,
    request_id: String,
    fingerprint: String,
}

impl Idempotency {
    /// `None` when the request has no `request_id`.
    pub fn new(org: &str, request_id: &str, method: &str, request: &impl prost::Message) -> ApiResult<Option<Self>> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > 128 || !request_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::field(
                "request_id",
                "must be at most 128 printable ASCII characters (a UUID is ideal)",
            ));
        }
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update([0]);
        h.update(request.encode_to_vec());
        Ok(Some(Idempotency { org: org.into(), request_id: request_id.into(), fingerprint: hex::encode(h.finalize()) }))
    }

    /// The stored response of an earlier identical request, if any.
    pub async fn replay<R: prost::Message + Default>(
        this: &Option<Self>,
        tx: &mut Tx,
        now: i64,
    ) -> ApiResult<Option<R>> {
        let Some(this) = this else { return Ok(None) };
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT fingerprint, response FROM idempotency WHERE org_id = $1 AND request_id = $2 AND created_at > $3",
        )
        .bind(&this.org)
        .bind(&this.request_id)
        .bind(now - TTL_MS)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((fingerprint, response)) = row else {
            return Ok(None);
        };
        if fingerprint != this.fingerprint {
            return Err(ApiError::new(Reason::RequestIdReused, "request_id was already used with a different request")
                .with("request_id", &this.request_id)
                .help("use a new request_id for each distinct request"));
        }
        let bytes = STANDARD.decode(response).map_err(ApiError::internal)?;
        Ok(Some(R::decode(bytes.as_slice()).map_err(ApiError::internal)?))
    }

    /// Stores `response` for later replays (call just before commit).
    pub async fn save<R: prost::Message>(this: &Option<Self>, tx: &mut Tx, response: &R, now: i64) -> ApiResult<()> {
        let Some(this) = this else { return Ok(()) };
        sqlx::query("DELETE FROM idempotency WHERE org_id = $1 AND request_id = $2 AND created_at <= $3")
            .bind(&this.org)
            .bind(&this.request_id)
            .bind(now - TTL_MS)
            .execute(&mut **tx)
            .await?;
        let insert = sqlx::query(
            "INSERT INTO idempotency (org_id, request_id, fingerprint, response, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&this.org)
        .bind(&this.request_id)
        .bind(&this.fingerprint)
        .bind(STANDARD.encode(response.encode_to_vec()))
        .bind(now)
        .execute(&mut **tx)
        .await;
        match insert {
            Err(e) if is_unique_violation(&e) => Err(ApiError::new(
                Reason::RequestInProgress,
                "another request with this request_id was processed at the same time; retry it",
            )),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }
}

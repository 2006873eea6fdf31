//! Keyset pagination with opaque tokens (AIP-158).
//!
//! A token holds the last id returned plus a fingerprint of who asked and with which
//! filters, so a token is only accepted by the same list, organization and filters.
//! Ids sort by creation time, so rows inserted while paging never shift earlier pages.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

pub struct Page {
    /// Rows to return; queries fetch one more to learn whether another page exists.
    pub size: i64,
    /// Only rows with an id greater than this.
    pub after: String,
    fingerprint: String,
}

impl Page {
    /// `scope` names the list, organization and filters (anything a token must not outlive).
    pub fn new(page_size: i32, token: &str, scope: &str) -> ApiResult<Page> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(ApiError::field("page_size", "must not be negative")),
            // AIP-158: values above the maximum are coerced to it.
            n => i64::from(n).min(MAX_PAGE_SIZE),
        };
        let fingerprint = hex::encode(&Sha256::digest(scope.as_bytes())[..8]);
        let after = if token.is_empty() { String::new() } else { decode(token, &fingerprint)? };
        Ok(Page { size, after, fingerprint })
    }

    /// Limit to pass to the query (one extra row tells whether there is a next page).
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// Trims the extra row and returns the token for the next page ("" on the last one).
    pub fn finish<T>(&self, rows: &mut Vec<T>, id: impl Fn(&T) -> &str) -> String {
        if rows.len() as i64 <= self.size {
            return String::new();
        }
        rows.truncate(self.size as usize);
        let last = rows.last().map(id).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(format!("v1|{}|{}", self.fingerprint, last))
    }
}

fn decode(token: &str, fingerprint: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::invalid("INVALID_PAGE_TOKEN", "page_token is malformed or belongs to another list or filter")
            .help("pass next_page_token unchanged, with the same filters; start over with an empty page_token")
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(f), Some(last)) if f == fingerprint && !last.is_empty() => Ok(last.to_string()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_scoped() {
        let p = Page::new(2, "", "users|acme").unwrap();
        let mut rows = vec!["a", "b", "c"];
        let token = p.finish(&mut rows, |r| r);
        assert_eq!(rows, vec!["a", "b"]);
        assert_eq!(Page::new(2, &token, "users|acme").unwrap().after, "b");
        assert!(Page::new(2, &token, "users|other").is_err());
        assert!(Page::new(2, "garbage!", "users|acme").is_err());
        assert!(Page::new(-1, "", "users|acme").is_err());
        assert_eq!(Page::new(5000, "", "x").unwrap().size, MAX_PAGE_SIZE);
    }
}

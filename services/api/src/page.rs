//! Keyset pagination with opaque tokens (AIP-158).
//!
//! A token holds the last id returned and a MAC (HMAC-SHA256 under a key derived from the
//! secrets key) over that id and the list's scope: who asked, which list, which filters. So a
//! token is only accepted by the same list, organization and filters, on any replica, and
//! nobody can make one up. Ids sort by creation time, so rows inserted while paging never
//! shift earlier pages.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use coursewire_core::error::{ApiError, ApiResult, Reason};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;
/// Bytes of the MAC kept in a token.
const TAG_LEN: usize = 16;

/// The key page tokens are signed with (derived from the secrets key).
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn new(key: [u8; 32]) -> TokenKey {
        TokenKey(key)
    }

    fn tag(&self, scope: &str, last: &str) -> [u8; TAG_LEN] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("any key length");
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac.update(last.as_bytes());
        mac.finalize().into_bytes()[..TAG_LEN].try_into().expect("32 bytes")
    }
}

pub struct Page {
    /// Rows to return; queries fetch one more to learn whether another page exists.
    pub size: i64,
    /// Only rows with an id greater than this.
    pub after: String,
    key: TokenKey,
    scope: String,
}

impl Page {
    /// `scope` names the list, organization and filters (anything a token must not outlive).
    pub fn new(key: &TokenKey, page_size: i32, token: &str, scope: &str) -> ApiResult<Page> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(ApiError::field("page_size", "must not be negative")),
            // AIP-158: values above the maximum are coerced to it.
            n => i64::from(n).min(MAX_PAGE_SIZE),
        };
        let after = if token.is_empty() { String::new() } else { decode(key, token, scope)? };
        Ok(Page { size, after, key: key.clone(), scope: scope.to_string() })
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
        let mut bytes = self.key.tag(&self.scope, last).to_vec();
        bytes.extend_from_slice(last.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

fn decode(key: &TokenKey, token: &str, scope: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::new(Reason::InvalidPageToken, "page_token is malformed or belongs to another list or filter")
            .help("pass next_page_token unchanged, with the same filters; start over with an empty page_token")
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    if raw.len() <= TAG_LEN {
        return Err(bad());
    }
    let (tag, last) = raw.split_at(TAG_LEN);
    let last = std::str::from_utf8(last).map_err(|_| bad())?;
    let expected = key.tag(scope, last);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(tag, &expected[..])) {
        return Err(bad());
    }
    Ok(last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_are_scoped_and_cannot_be_forged() {
        let key = TokenKey::new([9; 32]);
        let p = Page::new(&key, 2, "", "users|acme").unwrap();
        let mut rows = vec!["a", "b", "c"];
        let token = p.finish(&mut rows, |r| r);
        assert_eq!(rows, vec!["a", "b"]);
        assert_eq!(Page::new(&key, 2, &token, "users|acme").unwrap().after, "b");
        assert!(Page::new(&key, 2, &token, "users|other").is_err(), "bound to org and filters");
        assert!(Page::new(&TokenKey::new([8; 32]), 2, &token, "users|acme").is_err(), "only our key signs");
        let forged = URL_SAFE_NO_PAD.encode([&[0u8; TAG_LEN][..], b"usr_\0"].concat());
        assert!(Page::new(&key, 2, &forged, "users|acme").is_err());
        assert!(Page::new(&key, 2, "garbage!", "users|acme").is_err());
        assert!(Page::new(&key, -1, "", "users|acme").is_err());
        assert_eq!(Page::new(&key, 5000, "", "x").unwrap().size, MAX_PAGE_SIZE);
    }
}

//! API key secrets: format `sk_` + 48 lowercase hex, stored only as SHA-256, and the three
//! ways a caller may send one.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

use coursewire_core::error::{ApiError, ApiResult, Reason};

const SECRET_HEX_LEN: usize = 48;
/// Longest credential header we look at; anything longer is refused without parsing.
const MAX_HEADER_LEN: usize = 512;

pub struct NewSecret {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
}

pub fn generate() -> NewSecret {
    let mut bytes = [0u8; SECRET_HEX_LEN / 2];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("sk_{}", hex::encode(bytes));
    NewSecret { prefix: secret[3..11].to_string(), hash: hash(&secret), secret }
}

/// Hex SHA-256 of the secret: what the database stores and looks keys up by.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn is_secret(s: &str) -> bool {
    s.strip_prefix("sk_").is_some_and(|h| {
        h.len() == SECRET_HEX_LEN && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The secret from `authorization: Bearer …`, `authorization: Basic base64(key:)` or
/// `x-api-key: …`. The errors say what was wrong with what was sent.
pub fn from_headers(headers: &HeaderMap) -> ApiResult<String> {
    let malformed = |what: &str| ApiError::unauthenticated(Reason::MalformedCredentials, what.to_string());
    let candidate = if let Some(v) = headers.get("x-api-key") {
        v.to_str().map_err(|_| malformed("x-api-key is not ASCII"))?.to_string()
    } else if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        if v.len() > MAX_HEADER_LEN {
            return Err(malformed("authorization header is too long"));
        }
        let v = v.to_str().map_err(|_| malformed("authorization header is not ASCII"))?;
        let (scheme, value) =
            v.split_once(' ').ok_or_else(|| malformed("authorization must be `Bearer <key>` or `Basic <base64>`"))?;
        if scheme.eq_ignore_ascii_case("bearer") {
            value.to_string()
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(value).map_err(|_| malformed("Basic credentials are not valid base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| malformed("Basic credentials are not UTF-8"))?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| malformed("Basic credentials must be `key:` (key as user, empty password)"))?;
            if !password.is_empty() {
                return Err(malformed("Basic credentials must have an empty password: send the key as the user"));
            }
            user.to_string()
        } else {
            return Err(malformed("authorization scheme must be Bearer or Basic"));
        }
    } else {
        return Err(ApiError::unauthenticated(
            Reason::MissingCredentials,
            "no API key: send `authorization: Bearer sk_...`",
        ));
    };
    if candidate.len() > MAX_HEADER_LEN {
        return Err(malformed("API key is too long"));
    }
    if !is_secret(&candidate) {
        return Err(malformed("API keys look like `sk_` followed by 48 lowercase hex characters"));
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn accepts_the_three_forms() {
        let k = generate();
        assert_eq!(k.prefix.len(), 8);
        assert_eq!(k.hash.len(), 64);
        let basic = STANDARD.encode(format!("{}:", k.secret));
        for h in [
            headers("authorization", &format!("Bearer {}", k.secret)),
            headers("authorization", &format!("Basic {basic}")),
            headers("x-api-key", &k.secret),
        ] {
            assert_eq!(from_headers(&h).unwrap(), k.secret);
        }
    }

    #[test]
    fn rejects_malformed_values() {
        let k = generate();
        for (name, value) in [
            ("authorization", format!("Token {}", k.secret)),
            ("authorization", format!("Bearer  {}", k.secret)),
            ("authorization", "Basic !!!".to_string()),
            ("authorization", format!("Basic {}", STANDARD.encode(format!("{}:pw", k.secret)))),
            ("authorization", k.secret.clone()),
            ("x-api-key", k.secret.to_uppercase()),
            ("x-api-key", "sk_123".to_string()),
        ] {
            let e = from_headers(&headers(name, &value)).unwrap_err();
            assert_eq!(e.reason, Reason::MalformedCredentials, "{name}: {value}");
        }
        assert_eq!(from_headers(&HeaderMap::new()).unwrap_err().reason, Reason::MissingCredentials);
    }
}

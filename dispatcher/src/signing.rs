//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")),
//! with secrets written `whsec_` + base64(32 random bytes) (made by the API:
//! `coursewire_core::webhooks::endpoints::new_secret`). During a rotation both the old
//! and the new secret sign, and the header carries both signatures, space-separated.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coursewire_core::wire::SECRET_PREFIX as PREFIX;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A signing secret (its raw key bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)") // never print key material
    }
}

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text.strip_prefix(PREFIX).ok_or_else(|| format!("webhook secrets start with {PREFIX}"))?;
        let key = STANDARD.decode(encoded).map_err(|_| format!("the part after {PREFIX} is not base64"))?;
        if !(24..=64).contains(&key.len()) {
            return Err("webhook secrets hold 24 to 64 bytes".into());
        }
        Ok(Secret(key))
    }

    /// `whsec_<base64>`: the form shown to partners and stored.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// True when any `v1,` signature in `header` is this secret's, compared in constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.sign(id, timestamp, body);
        header.split(' ').any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected.as_bytes())))
    }
}

/// The `webhook-signature` header value: one signature per active secret.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use coursewire_core::webhooks::endpoints::new_secret;

    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_both_secrets() {
        let (old, new) = (Secret::parse(&new_secret()).unwrap(), Secret::parse(&new_secret()).unwrap());
        let header = signature_header(&[new.clone(), old.clone()], "evt_1", 1700000000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(old.verify("evt_1", 1700000000, b"{}", &header));
        assert!(new.verify("evt_1", 1700000000, b"{}", &header));
        assert!(!new.verify("evt_1", 1700000001, b"{}", &header), "the timestamp is signed");
        assert!(!new.verify("evt_1", 1700000000, b"{ }", &header), "the body is signed");
    }

    #[test]
    fn secrets_round_trip_and_never_print() {
        let s = Secret::parse(&new_secret()).unwrap();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(Secret::parse(&s.expose()).unwrap(), s);
        assert_eq!(format!("{s:?}"), "Secret(…)");
        assert!(Secret::parse("sk_nope").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_AAAA").is_err(), "too short");
    }
}

//! Standard Webhooks signatures: `v1,<base64(HMAC-SHA256(key, "<id>.<ts>.<body>"))>`
//! where the key is the base64 text of a `whsec_...` secret, decoded.

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Decodes secrets with or without `=` padding, as other Standard Webhooks
/// libraries accept both.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A secret that is not `whsec_` followed by base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must be \"whsec_\" followed by a base64 key")]
pub struct InvalidSecret;

/// A key that signs (and checks) webhook requests. Its `Debug` shows no key.
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// The key of a `whsec_...` secret (the prefix may be left out, as other
    /// Standard Webhooks libraries allow).
    pub fn from_secret(secret: &str) -> Result<Self, InvalidSecret> {
        let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = SECRET_BASE64
            .decode(b64.trim())
            .map_err(|_| InvalidSecret)?;
        if key.is_empty() {
            return Err(InvalidSecret);
        }
        Self::from_bytes(&key)
    }

    /// A key from raw bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Self, InvalidSecret> {
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| InvalidSecret)?;
        Ok(Self { mac })
    }

    /// The `webhook-signature` header value for this message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.tag(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Whether one of the space-separated `v1,` signatures of a
    /// `webhook-signature` header is right for this message (compared in
    /// constant time). It does not check the timestamp's age: a receiver
    /// should also refuse timestamps more than a few minutes off.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|sig| {
            let Some(b64) = sig.strip_prefix("v1,") else {
                return false;
            };
            let Ok(expected) = STANDARD.decode(b64) else {
                return false;
            };
            self.tag(id, timestamp, body)
                .verify_slice(&expected)
                .is_ok()
        })
    }

    fn tag(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn matches_the_standard_webhooks_crate() {
        let ours = SigningKey::from_secret(SECRET).unwrap();
        let theirs = standardwebhooks::Webhook::new(SECRET).unwrap();
        let body = br#"{"seq":1,"type":"job.created"}"#;
        let id = "0192f7c5-0000-7000-8000-000000000001";
        let ts = 1_700_000_000;
        assert_eq!(ours.sign(id, ts, body), theirs.sign(id, ts, body).unwrap());
    }

    #[test]
    fn verifies_its_own_and_refuses_others() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let sig = key.sign("id", 5, b"body");
        assert!(key.verify("id", 5, b"body", &sig));
        assert!(key.verify("id", 5, b"body", &format!("v1,bm9wZQ== {sig}")));
        assert!(!key.verify("id", 6, b"body", &sig));
        assert!(!key.verify("id", 5, b"bodx", &sig));
        let other = SigningKey::from_secret("whsec_c2VjcmV0").unwrap();
        assert!(!other.verify("id", 5, b"body", &sig));
    }

    #[test]
    fn refuses_bad_secrets() {
        assert!(SigningKey::from_secret("whsec_not base64!").is_err());
        assert!(SigningKey::from_secret("whsec_").is_err());
        assert!(
            SigningKey::from_secret("c2VjcmV0").is_ok(),
            "prefix is optional"
        );
    }
}

//! Webhook signature verification, over the raw body bytes and in constant time.
//!
//! Two schemes are accepted, each with every configured secret of an endpoint (rotation):
//! - **hex**: `X-Webhook-Signature: <hex>` or `sha256=<hex>`, the HMAC-SHA256 of the body keyed
//!   with the secret's literal bytes (what `openssl dgst -sha256 -hmac "$SECRET"` computes);
//! - **Standard Webhooks**: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64> …`,
//!   the HMAC of `{id}.{timestamp}.{body}` keyed with the base64-decoded `whsec_` secret (or the
//!   raw secret), with a timestamp tolerance either way.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

pub const HEX_SIGNATURE_HEADER: &str = "x-webhook-signature";
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// Why a signature was refused. The message never contains a secret or a computed MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is missing")]
    Missing,
    #[error("signature header is malformed")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
    #[error("webhook timestamp is outside the tolerance")]
    TimestampOutOfTolerance,
}

/// The request headers a verifier reads, already decoded as UTF-8 where present.
#[derive(Debug, Default, Clone, Copy)]
pub struct SignatureHeaders<'a> {
    pub hex_signature: Option<&'a str>,
    pub webhook_id: Option<&'a str>,
    pub webhook_timestamp: Option<&'a str>,
    pub webhook_signature: Option<&'a str>,
}

/// Returns the Standard Webhooks key of a `whsec_` secret: `None` when the secret has no such
/// prefix, `Some(Err)` when the rest is not base64.
pub fn standard_webhooks_key(secret: &str) -> Option<Result<Vec<u8>, ()>> {
    secret
        .strip_prefix("whsec_")
        .map(|b64| BASE64.decode(b64).map_err(|_| ()))
}

/// Verifies one endpoint's webhooks. Keys are set up once; each check clones a keyed MAC.
#[derive(Clone)]
pub struct Verifier {
    hex_macs: Vec<HmacSha256>,
    standard_macs: Vec<HmacSha256>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.hex_macs.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(secrets: &[Secret], tolerance_secs: u64) -> Self {
        let keyed = |key: &[u8]| HmacSha256::new_from_slice(key).expect("HMAC takes any key");
        let hex_macs = secrets
            .iter()
            .map(|s| keyed(s.expose().as_bytes()))
            .collect();
        let standard_macs = secrets
            .iter()
            .map(|s| match standard_webhooks_key(s.expose()) {
                Some(Ok(key)) => keyed(&key),
                _ => keyed(s.expose().as_bytes()),
            })
            .collect();
        Self {
            hex_macs,
            standard_macs,
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        }
    }

    /// Verifies `body` against whichever scheme the headers carry; the Standard Webhooks
    /// headers win when both are present. `now` is the current Unix time in seconds.
    pub fn verify(
        &self,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        if let Some(signatures) = headers.webhook_signature {
            self.verify_standard(headers, signatures, body, now)
        } else if let Some(signature) = headers.hex_signature {
            self.verify_hex(signature, body)
        } else {
            Err(SignatureError::Missing)
        }
    }

    fn verify_hex(&self, header: &str, body: &[u8]) -> Result<(), SignatureError> {
        let hex_digest = header.trim();
        let hex_digest = hex_digest.strip_prefix("sha256=").unwrap_or(hex_digest);
        let mut expected = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut expected).map_err(|_| SignatureError::Malformed)?;
        let mut matched = false;
        // Every secret is tried, so the time taken does not tell which one matched.
        for mac in &self.hex_macs {
            let mut mac = mac.clone();
            mac.update(body);
            matched |= mac.verify_slice(&expected).is_ok();
        }
        matched.then_some(()).ok_or(SignatureError::Mismatch)
    }

    fn verify_standard(
        &self,
        headers: &SignatureHeaders<'_>,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let id = headers.webhook_id.ok_or(SignatureError::Missing)?;
        let timestamp_text = headers.webhook_timestamp.ok_or(SignatureError::Missing)?;
        let timestamp: i64 = timestamp_text
            .trim()
            .parse()
            .map_err(|_| SignatureError::Malformed)?;
        if now.abs_diff(timestamp) > self.tolerance_secs.unsigned_abs() {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        let candidates: Vec<[u8; 32]> = signatures
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| {
                let mut out = [0u8; 32];
                match BASE64.decode_slice(b64, &mut out) {
                    Ok(32) => Some(out),
                    _ => None,
                }
            })
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::Malformed);
        }
        let mut matched = false;
        for mac in &self.standard_macs {
            let mut mac = mac.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp_text.trim().as_bytes());
            mac.update(b".");
            mac.update(body);
            for candidate in &candidates {
                matched |= mac.clone().verify_slice(candidate).is_ok();
            }
        }
        matched.then_some(()).ok_or(SignatureError::Mismatch)
    }
}

/// Signs `body` for the hex scheme: lowercase hex, as `openssl dgst -sha256 -hmac` prints it.
pub fn sign_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Signs `body` for Standard Webhooks: the `v1,<base64>` value of one `webhook-signature`.
pub fn sign_standard(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = match standard_webhooks_key(secret) {
        Some(Ok(key)) => key,
        _ => secret.as_bytes().to_vec(),
    };
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secrets: &[&str]) -> Verifier {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Verifier::new(&secrets, 300)
    }

    fn hex(sig: &str) -> SignatureHeaders<'_> {
        SignatureHeaders {
            hex_signature: Some(sig),
            ..Default::default()
        }
    }

    #[test]
    fn hex_scheme_accepts_both_forms_and_cases() {
        let v = verifier(&["It's a Secret to Everybody"]);
        let lower = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign_hex("It's a Secret to Everybody", b"Hello, World!"),
            lower
        );
        for sig in [
            lower.to_owned(),
            lower.to_uppercase(),
            format!("sha256={lower}"),
        ] {
            assert_eq!(v.verify(&hex(&sig), b"Hello, World!", 0), Ok(()));
        }
    }

    #[test]
    fn hex_scheme_rejects_forged_truncated_empty_and_missing() {
        let v = verifier(&["secret-one"]);
        let good = sign_hex("secret-one", b"{}");
        let mut forged = good.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            v.verify(&hex(&forged), b"{}", 0),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(&hex(&good[..62]), b"{}", 0),
            Err(SignatureError::Malformed)
        );
        assert_eq!(v.verify(&hex(""), b"{}", 0), Err(SignatureError::Malformed));
        assert_eq!(
            v.verify(&hex(&good), b"{ }", 0),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(&SignatureHeaders::default(), b"{}", 0),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn every_rotated_secret_is_accepted() {
        let v = verifier(&["current-secret", "previous-secret"]);
        for secret in ["current-secret", "previous-secret"] {
            assert_eq!(v.verify(&hex(&sign_hex(secret, b"x")), b"x", 0), Ok(()));
        }
        assert_eq!(
            v.verify(&hex(&sign_hex("retired-secret", b"x")), b"x", 0),
            Err(SignatureError::Mismatch)
        );
    }
}

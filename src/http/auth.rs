//! Operator authentication for `/api/v1/*`: `Authorization: Bearer <key>` with a key from
//! `OPERATOR_API_KEYS`. Reads (GET) need any key; everything else a read-write key. Keys are
//! compared as SHA-256 digests in constant time. With no keys configured (development only),
//! loopback clients are let in.

use axum::{
    extract::{Request, State},
    http::{Method, header},
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::peer_addr;
use crate::{app::AppState, config::Access, error::AppError};

/// Who made an API call, for `dismissedBy`.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
}

pub async fn require_operator(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let credentials = state.credentials();
    let keys = &credentials.operator_keys;
    let operator = if keys.is_empty() {
        match peer_addr(&request) {
            Some(addr) if addr.ip().is_loopback() => Operator {
                name: "local".to_owned(),
            },
            _ => {
                return Err(AppError::Unauthorized(
                    "no operator keys are configured: the API answers loopback clients only".into(),
                ));
            }
        }
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| AppError::Unauthorized("missing bearer token".into()))?;
        let presented = Sha256::digest(presented.trim().as_bytes());
        let mut found = None;
        // Every key is compared, so timing does not tell which (or whether one) matched.
        for key in keys {
            let digest = Sha256::digest(key.key.expose().as_bytes());
            if bool::from(digest.as_slice().ct_eq(presented.as_slice())) {
                found = Some(key);
            }
        }
        let key = found.ok_or_else(|| AppError::Unauthorized("unknown operator key".into()))?;
        let reading = matches!(*request.method(), Method::GET | Method::HEAD);
        if !reading && key.access != Access::ReadWrite {
            return Err(AppError::Forbidden("this operator key is read-only".into()));
        }
        Operator {
            name: key.name.clone(),
        }
    };
    request.extensions_mut().insert(operator);
    Ok(next.run(request).await)
}

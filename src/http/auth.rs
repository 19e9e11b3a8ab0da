//! Who may write to a namespace: its API keys, sent as `Authorization: Bearer <key>` or
//! `X-API-Key: <key>`, stored only as SHA-256 and compared in constant time. A
//! namespace without keys is open only when its file says `public = true`.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::runtime::Namespace;

/// The key a request carries, if any.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    // The scheme is case-insensitive (RFC 9110); the key is not.
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    bearer
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|k| !k.is_empty())
}

fn matches(hashes: &[[u8; 32]], digest: &[u8; 32]) -> bool {
    // Every hash is compared, so the time taken does not tell which one matched.
    hashes
        .iter()
        .fold(false, |found, h| found | bool::from(h.ct_eq(digest)))
}

/// Whether the request carries the admin key (`admin_key_sha256` in `wald.toml`).
/// Without one configured, the admin routes are off.
pub fn authorize_admin(
    headers: &HeaderMap,
    service: &crate::service::ServiceConfig,
) -> Result<(), ApiError> {
    let hash: [u8; 32] = service
        .admin_key_sha256
        .as_ref()
        .and_then(|h| hex::decode(h.expose()).ok()?.try_into().ok())
        .ok_or(ApiError::AdminDisabled)?;
    let key = presented_key(headers).ok_or(ApiError::MissingKey)?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if matches(&[hash], &digest) {
        Ok(())
    } else {
        Err(ApiError::InvalidAdminKey)
    }
}

/// Whether the request may write to `target`. A key of another namespace is told apart
/// from an unknown one (403 rather than 401).
pub fn authorize<'a>(
    headers: &HeaderMap,
    target: &Namespace,
    all: impl IntoIterator<Item = &'a std::sync::Arc<Namespace>>,
) -> Result<(), ApiError> {
    let source = &target.pipeline.config.source;
    if source.public {
        return Ok(());
    }
    let key = presented_key(headers).ok_or(ApiError::MissingKey)?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if matches(&target.key_hashes, &digest) {
        return Ok(());
    }
    if all.into_iter().any(|n| matches(&n.key_hashes, &digest)) {
        return Err(ApiError::Forbidden(target.name().to_string()));
    }
    Err(ApiError::InvalidKey(target.name().to_string()))
}

//! What every simulated marketplace shares: the world they all change, and
//! the gate each API call passes first (the call recorded, the key checked,
//! the documented rate limits and the switched-on faults applied).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::world::{CallRecord, World};
use crate::crd::ProviderName;

pub struct Sim {
    pub(super) world: Mutex<World>,
}

impl Sim {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the call, checks the key, and applies the switched-on faults
    /// that any endpoint can suffer. `Err` is the response to send instead.
    pub(crate) async fn gate(
        &self,
        provider: ProviderName,
        method: &str,
        path: &str,
        presented_key: Option<&str>,
    ) -> Result<(), Response> {
        let hang = {
            let mut world = self.world();
            world.finish_deletes();
            world.calls.push(CallRecord { provider, method: method.into(), path: path.into() });
            let expected = world.market.keys.of(provider).to_string();
            let faults = world.faults(provider);
            if faults.auth_failure || presented_key != Some(expected.as_str()) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "invalid_api_key", "msg": "Invalid API key"})),
                )
                    .into_response());
            }
            let limited = !faults.no_rate_limits;
            let vast_interval = match faults.endpoint_interval_ms {
                0 => super::world::VAST_ENDPOINT_INTERVAL,
                ms => Duration::from_millis(ms),
            };
            if limited
                && let Some(body) = world.rate_limits.over(
                    provider,
                    &format!("{method} {path}"),
                    tokio::time::Instant::now(),
                    vast_interval,
                )
            {
                // Vast sends no Retry-After (its docs say so); plain text, as its docs show.
                return Err((StatusCode::TOO_MANY_REQUESTS, body).into_response());
            }
            let faults = world.faults(provider);
            if faults.rate_limits > 0 {
                faults.rate_limits -= 1;
                let after = faults.retry_after_secs.to_string();
                return Err((StatusCode::TOO_MANY_REQUESTS, [("retry-after", after)], "rate limited").into_response());
            }
            if faults.server_errors > 0 {
                faults.server_errors -= 1;
                return Err((StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response());
            }
            if faults.hangs > 0 {
                faults.hangs -= 1;
                Some(Duration::from_millis(faults.hang_ms))
            } else {
                None
            }
        };
        if let Some(hang) = hang {
            tokio::time::sleep(hang).await;
        }
        Ok(())
    }
}

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

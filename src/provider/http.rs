//! The HTTP plumbing every marketplace client shares: a per-call timeout,
//! retry with exponential backoff and jitter on transient failures, respect
//! for 429 Retry-After, and the status codes every API means the same way.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::circuit::{Circuit, Permission, Refusal};
use super::error::{ProviderError, excerpt};
use super::pacing::{Limits, Pacer};
use crate::crd::ProviderName;

/// Whether a call may be repeated after an answer was possibly lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads and destroys: repeat freely.
    Safe,
    /// Creates: repeat only when the request surely never arrived (connect
    /// error, 429). After a timeout or 5xx the instance may exist; the caller
    /// finds it by label instead of renting a second one.
    Unsafe,
}

/// Tunables of one client.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    pub timeout: Duration,
    pub max_attempts: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A Retry-After longer than this is returned to the caller instead of slept through.
    pub max_retry_after: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            timeout: Duration::from_secs(20),
            max_attempts: 4,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// A successful (2xx or provider-specific 4xx) answer.
pub struct Reply {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

pub struct Transport {
    pub provider: ProviderName,
    client: reqwest::Client,
    policy: CallPolicy,
    secret: SecretString,
    pacer: Pacer,
    /// Calls on the wire at once (see `CALLS_IN_FLIGHT`).
    in_flight: tokio::sync::Semaphore,
    /// Slots only money calls may take (see `MONEY_LANE`).
    money_lane: tokio::sync::Semaphore,
    /// Calls held back while the marketplace does not answer.
    circuit: Circuit,
}

/// At most this many calls to one marketplace on the wire at once: each holds a
/// connection with its TLS state and buffers, and a thousand sessions starting
/// together would otherwise open a thousand. Per marketplace, so one that hangs
/// holds up only its own calls.
pub const CALLS_IN_FLIGHT: usize = 16;

/// A few more slots that only money calls (destroys and what confirms them) may
/// take: the pacer sends them first, but sixteen slow searches already on the
/// wire would otherwise hold a destroy back until one of them answers.
pub const MONEY_LANE: usize = 4;

impl Transport {
    pub fn new(provider: ProviderName, secret: SecretString, policy: CallPolicy, limits: Limits) -> Self {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("gpu-shopper/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("reqwest client with rustls");
        Transport {
            provider,
            client,
            circuit: Circuit::new(policy.timeout),
            policy,
            secret,
            pacer: Pacer::new(limits),
            in_flight: tokio::sync::Semaphore::new(CALLS_IN_FLIGHT),
            money_lane: tokio::sync::Semaphore::new(MONEY_LANE),
        }
    }

    /// A slot on the wire: any free one for a money call, a shared one for the rest.
    async fn wire_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        let slot = if super::caller::current().urgency == super::caller::Urgency::Money {
            tokio::select! {
                biased;
                slot = self.in_flight.acquire() => slot,
                slot = self.money_lane.acquire() => slot,
            }
        } else {
            self.in_flight.acquire().await
        };
        slot.expect("the semaphores are never closed")
    }

    pub fn limits(&self) -> Limits {
        self.pacer.limits()
    }

    /// What is left of this marketplace's pacing budget now.
    pub fn headroom(&self) -> super::pacing::Headroom {
        self.pacer.headroom()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Body excerpt safe for errors and logs.
    pub fn excerpt(&self, body: &[u8]) -> String {
        excerpt(body, &[self.secret.expose_secret()])
    }

    /// Sends the request built by `build` once the pacer gives `endpoint` a
    /// slot, retrying transient failures. 2xx and 4xx other than 401/403/429
    /// are returned for the client to interpret.
    pub async fn call(
        &self,
        idempotency: Idempotency,
        endpoint: &'static str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Reply, ProviderError> {
        let mut delays = self.backoff();
        // A retry held back by the circuit reports what the call itself met.
        let mut last_error: Option<ProviderError> = None;
        loop {
            if let Some(refusal) = self.circuit.would_refuse(Instant::now()) {
                return Err(last_error.unwrap_or_else(|| self.held_back(refusal)));
            }
            if let Err(full) = self.pacer.acquire(endpoint).await {
                return Err(
                    last_error.unwrap_or(ProviderError::Busy { provider: self.provider, waiting: full.waiting })
                );
            }
            let outcome = {
                let _on_the_wire = self.wire_slot().await;
                // Checked again: the calls ahead in the queue may have found it hanging.
                let permission = self.circuit.permission(Instant::now());
                if let Permission::Refuse(refusal) = permission {
                    return Err(last_error.unwrap_or_else(|| self.held_back(refusal)));
                }
                let probe = ProbeGuard { circuit: &self.circuit, armed: permission == Permission::Probe };
                let outcome = self.attempt(build()).await;
                match &outcome {
                    Err(Attempt::Transient { error: ProviderError::Timeout { .. }, .. }) => {
                        self.circuit.timed_out(&permission, Instant::now())
                    }
                    _ => self.circuit.answered(),
                }
                probe.disarm();
                outcome
            };
            match &outcome {
                Err(Attempt::Transient { error: ProviderError::RateLimited { .. }, .. }) => {
                    self.pacer.rate_limited(endpoint)
                }
                Ok(_) => self.pacer.succeeded(endpoint),
                Err(_) => {}
            }
            let error = match outcome {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Transient { error, arrived }) => {
                    if arrived && idempotency == Idempotency::Unsafe {
                        return Err(error);
                    }
                    error
                }
            };
            let Some(mut delay) = delays.next() else { return Err(error) };
            if let ProviderError::RateLimited { retry_after: Some(after), .. } = &error {
                if *after > self.policy.max_retry_after {
                    return Err(error);
                }
                delay = delay.max(*after);
            }
            tracing::debug!(provider = %self.provider, %error, delay_ms = delay.as_millis() as u64, "retrying provider call");
            last_error = Some(error);
            tokio::time::sleep(delay).await;
        }
    }

    /// The error for a call the circuit holds back (it was never sent).
    fn held_back(&self, Refusal { unanswered, retry_in }: Refusal) -> ProviderError {
        ProviderError::Unresponsive { provider: self.provider, unanswered, retry_in }
    }

    /// Delays between attempts: exponential with jitter, `max_attempts - 1` of them.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.policy.min_backoff)
            .with_max_delay(self.policy.max_backoff)
            .with_jitter()
            .with_max_times(self.policy.max_attempts.saturating_sub(1))
            .build()
    }

    /// A JSON REST call with the bearer key: `body`, when given, is sent as JSON.
    pub async fn bearer_call(
        &self,
        method: reqwest::Method,
        url: &str,
        endpoint: &'static str,
        body: Option<&serde_json::Value>,
        idempotency: Idempotency,
    ) -> Result<Reply, ProviderError> {
        self.call(idempotency, endpoint, || {
            let request = self.client.request(method.clone(), url).bearer_auth(self.secret());
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await
    }

    /// The error for an answer this client cannot use.
    pub fn unexpected(&self, reply: &Reply) -> ProviderError {
        ProviderError::BadResponse {
            provider: self.provider,
            status: reply.status.as_u16(),
            body: self.excerpt(&reply.body),
        }
    }

    async fn attempt(&self, request: RequestBuilder) -> Result<Reply, Attempt> {
        let provider = self.provider;
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                let error = ProviderError::Timeout { provider, timeout: self.policy.timeout };
                return Err(Attempt::Transient { error, arrived: !e.is_connect() });
            }
            Err(e) => {
                let arrived = !e.is_connect();
                // reqwest errors carry the URL, which may hold a key in its query: drop it.
                let message = e.without_url().to_string();
                let error =
                    ProviderError::Unavailable { provider, message: excerpt(message.as_bytes(), &[self.secret()]) };
                return Err(Attempt::Transient { error, arrived });
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) if e.is_timeout() => {
                let error = ProviderError::Timeout { provider, timeout: self.policy.timeout };
                return Err(Attempt::Transient { error, arrived: true });
            }
            Err(_) => {
                let error = ProviderError::Unavailable { provider, message: "connection dropped mid-response".into() };
                return Err(Attempt::Transient { error, arrived: true });
            }
        };
        match status.as_u16() {
            401 | 403 => Err(Attempt::Final(ProviderError::AuthFailed { provider, status: status.as_u16() })),
            // A 429 means the request was refused, so even a create may be repeated.
            429 => {
                Err(Attempt::Transient { error: ProviderError::RateLimited { provider, retry_after }, arrived: false })
            }
            500..=599 => {
                let message = format!("HTTP {status}: {}", self.excerpt(&body));
                Err(Attempt::Transient { error: ProviderError::Unavailable { provider, message }, arrived: true })
            }
            _ => Ok(Reply { status, body }),
        }
    }
}

/// Frees the probe of a held marketplace when its caller goes away before the answer.
struct ProbeGuard<'a> {
    circuit: &'a Circuit,
    armed: bool,
}

impl ProbeGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.circuit.probe_abandoned();
        }
    }
}

enum Attempt {
    Final(ProviderError),
    /// `arrived`: the provider may have acted on the request.
    Transient {
        error: ProviderError,
        arrived: bool,
    },
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Parses a JSON body, mapping a shape we cannot read to `BadResponse`.
pub fn parse_json<T: serde::de::DeserializeOwned>(transport: &Transport, reply: &Reply) -> Result<T, ProviderError> {
    serde_json::from_slice(&reply.body).map_err(|e| ProviderError::BadResponse {
        provider: transport.provider,
        status: reply.status.as_u16(),
        body: format!("{e}; body: {}", transport.excerpt(&reply.body)),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::provider::caller::Urgency;

    #[tokio::test]
    async fn calls_on_the_wire_to_one_marketplace_are_bounded() {
        let (serving, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counting, peak) = (serving.clone(), most.clone());
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get(move || {
                let (serving, most) = (counting.clone(), peak.clone());
                async move {
                    most.fetch_max(serving.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    serving.fetch_sub(1, Ordering::SeqCst);
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let transport =
            Transport::new(ProviderName::Runpod, SecretString::from("k"), CallPolicy::default(), Limits::NONE);
        let calls = (0..CALLS_IN_FLIGHT * 3)
            .map(|_| transport.bearer_call(reqwest::Method::GET, &url, "GET /slow", None, Idempotency::Safe));
        for reply in futures::future::join_all(calls).await {
            assert_eq!(reply.unwrap().status.as_u16(), 200);
        }
        assert_eq!(most.load(Ordering::SeqCst), CALLS_IN_FLIGHT, "the marketplace never saw more at once");
    }

    #[tokio::test]
    async fn a_destroy_is_not_held_back_by_searches_that_fill_the_wire() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (searching, waiting) = (Arc::new(AtomicUsize::new(0)), release.clone());
        let on_the_wire = searching.clone();
        let app = axum::Router::new()
            .route(
                "/search",
                axum::routing::get(move || {
                    let (on_the_wire, waiting) = (on_the_wire.clone(), waiting.clone());
                    async move {
                        // Registered before it is counted, so the release cannot pass it by.
                        let released = waiting.notified();
                        on_the_wire.fetch_add(1, Ordering::SeqCst);
                        released.await;
                        "{}"
                    }
                }),
            )
            .route("/destroy", axum::routing::get(|| async { "{}" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let transport = Arc::new(Transport::new(
            ProviderName::Vastai,
            SecretString::from("k"),
            CallPolicy::default(),
            Limits::NONE,
        ));
        let search = format!("{base}/search");
        let searches: Vec<_> = (0..CALLS_IN_FLIGHT)
            .map(|_| {
                let (transport, search) = (transport.clone(), search.clone());
                tokio::spawn(crate::provider::caller::calling(Urgency::Search, "a", async move {
                    transport.bearer_call(reqwest::Method::GET, &search, "GET /search", None, Idempotency::Safe).await
                }))
            })
            .collect();
        while searching.load(Ordering::SeqCst) < CALLS_IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let destroy = format!("{base}/destroy");
        let call = |urgency| {
            let (transport, destroy) = (transport.clone(), destroy.clone());
            crate::provider::caller::calling(urgency, "b", async move {
                transport.bearer_call(reqwest::Method::GET, &destroy, "GET /destroy", None, Idempotency::Safe).await
            })
        };
        // Every shared slot is held: a lookup waits, a destroy goes through its own lane.
        let lookup = tokio::spawn(call(Urgency::Lookup));
        let destroyed = tokio::time::timeout(Duration::from_secs(5), call(Urgency::Money)).await;
        assert!(destroyed.expect("the destroy waited for the searches").is_ok());
        assert!(!lookup.is_finished(), "a lookup took a slot only money may take");
        release.notify_waiters();
        for search in searches {
            assert!(search.await.unwrap().is_ok());
        }
        assert!(lookup.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_marketplace_that_stops_answering_is_not_waited_on_by_every_caller() {
        let (hanging, received) = (Arc::new(std::sync::atomic::AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let (hangs, count) = (hanging.clone(), received.clone());
        let app = axum::Router::new().route(
            "/x",
            axum::routing::get(move || {
                let (hangs, count) = (hangs.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if hangs.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let timeout = Duration::from_millis(300);
        let policy = CallPolicy { timeout, max_attempts: 1, ..CallPolicy::default() };
        let transport = Transport::new(ProviderName::Vastai, SecretString::from("k"), policy, Limits::NONE);
        let call = || transport.bearer_call(reqwest::Method::GET, &url, "GET /x", None, Idempotency::Safe);

        for _ in 0..super::super::circuit::OPEN_AFTER {
            assert!(matches!(call().await, Err(ProviderError::Timeout { .. })));
        }
        let started = tokio::time::Instant::now();
        let held: Vec<_> = futures::future::join_all((0..20).map(|_| call())).await;
        assert!(
            started.elapsed() < timeout / 3,
            "held back at once, not each after its timeout: {:?}",
            started.elapsed()
        );
        for error in held {
            let error = error.err().expect("held back");
            assert!(matches!(error, ProviderError::Unresponsive { unanswered: 2, .. }), "{error:?}");
            assert!(!error.create_may_have_landed(), "a call held back was never sent");
            assert!(error.to_string().contains("not answering"), "{error}");
        }
        assert_eq!(received.load(Ordering::SeqCst), 2, "no held-back call reached the marketplace");

        // Once it answers again, the probe after the hold goes through and so does everyone after it.
        hanging.store(false, Ordering::SeqCst);
        tokio::time::sleep(timeout).await;
        assert_eq!(call().await.unwrap().status.as_u16(), 200);
        assert_eq!(call().await.unwrap().status.as_u16(), 200);
        assert_eq!(received.load(Ordering::SeqCst), 4);
    }
}

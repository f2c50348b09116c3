//! A short-lived cache of search results per marketplace and query, so that a
//! burst of sessions does not search the same market once each: one search per
//! marketplace and query is in flight at a time, and everyone who asks meanwhile
//! shares its answer. Volatile inventories get a shorter TTL; an offer found
//! gone invalidates its marketplace. A failed search is remembered briefly, and
//! while a marketplace's last answer was a failure nobody queues behind its next
//! search: a hanging marketplace is waited on by one session, not by all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::ask::{Answer, search_within};
use crate::crd::ProviderName;
use crate::provider::{OfferQuery, Provider, ProviderError};

/// How long a failed search is answered from memory before the marketplace is asked again.
const FAILURE_TTL: Duration = Duration::from_secs(5);

type Key = (ProviderName, String);

#[derive(Default)]
struct Slot {
    /// The last answer and when it came.
    last: Option<(Instant, Answer)>,
    /// The search in flight, if one is.
    in_flight: Option<Shared<BoxFuture<'static, Answer>>>,
}

pub struct OfferCache {
    ttl: HashMap<ProviderName, Duration>,
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
}

impl Default for OfferCache {
    /// TensorDock's inventory is the stalest, so it is trusted for the shortest time.
    fn default() -> Self {
        Self::with_ttls([
            (ProviderName::Vastai, Duration::from_secs(15)),
            (ProviderName::Tensordock, Duration::from_secs(10)),
            (ProviderName::Runpod, Duration::from_secs(30)),
        ])
    }
}

/// What to do about one question.
enum Plan {
    Answer(Answer),
    Wait(Shared<BoxFuture<'static, Answer>>),
}

impl OfferCache {
    pub fn with_ttls(ttls: impl IntoIterator<Item = (ProviderName, Duration)>) -> Self {
        OfferCache { ttl: ttls.into_iter().collect(), slots: Arc::default() }
    }

    fn key(provider: ProviderName, query: &OfferQuery) -> Key {
        (provider, format!("{query:?}"))
    }

    fn ttl(&self, provider: ProviderName) -> Duration {
        self.ttl.get(&provider).copied().unwrap_or_default()
    }

    /// `provider`'s offers for `query`: from the cache when fresh, else from the
    /// search in flight or a new one, which is bounded by `timeout`.
    pub async fn search(&self, provider: &Arc<dyn Provider>, query: &OfferQuery, timeout: Duration) -> Answer {
        let name = provider.name();
        let key = Self::key(name, query);
        let plan = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let ttl = self.ttl(name);
            let known = slots.get(&key).and_then(|slot| match (&slot.last, &slot.in_flight) {
                (Some((at, Ok(offers))), _) if at.elapsed() < ttl => Some(Plan::Answer(Ok(offers.clone()))),
                (Some((at, Err(error))), _) if at.elapsed() < FAILURE_TTL.min(ttl) => {
                    Some(Plan::Answer(Err(error.clone())))
                }
                // It failed last time: do not queue behind a marketplace that may be hanging.
                (Some((_, Err(error))), Some(_)) => Some(Plan::Answer(Err(error.clone()))),
                (_, Some(in_flight)) => Some(Plan::Wait(in_flight.clone())),
                (_, None) => None,
            });
            known.unwrap_or_else(|| {
                // A new search: the time to forget other answers gone stale (not on every
                // question). This one's last answer stays: if it was a failure, nobody
                // queues behind the search now starting.
                slots.retain(|k @ (p, _), slot| {
                    *k == key
                        || slot.in_flight.is_some()
                        || slot.last.as_ref().is_some_and(|(at, _)| at.elapsed() < self.ttl(*p))
                });
                let search = self.start(provider.clone(), query.clone(), timeout, key.clone());
                slots.entry(key).or_default().in_flight = Some(search.clone());
                Plan::Wait(search)
            })
        };
        match plan {
            Plan::Answer(answer) => answer,
            Plan::Wait(search) => search.await,
        }
    }

    /// One search as a task of its own, so that it ends and is stored even when
    /// the session that started it stops waiting.
    fn start(
        &self,
        provider: Arc<dyn Provider>,
        query: OfferQuery,
        timeout: Duration,
        key: Key,
    ) -> Shared<BoxFuture<'static, Answer>> {
        let slots = self.slots.clone();
        let name = provider.name();
        let task = tokio::spawn(async move {
            let answer = search_within(provider.as_ref(), &query, timeout).await;
            let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(key).or_default();
            slot.last = Some((Instant::now(), answer.clone()));
            slot.in_flight = None;
            answer
        });
        async move {
            task.await.unwrap_or_else(|_| {
                Err(ProviderError::Unavailable { provider: name, message: "the search was cancelled".into() })
            })
        }
        .boxed()
        .shared()
    }

    /// Forgets every cached search of `provider` (an offer it listed was gone).
    pub fn invalidate(&self, provider: ProviderName) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for ((p, _), slot) in slots.iter_mut() {
            if *p == provider {
                slot.last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::provider::{CreateRequest, Instance, Offer};

    /// A marketplace that answers each search after `delay`, or hangs while `hangs`.
    struct Counting {
        searches: AtomicUsize,
        delay: Duration,
        hangs: std::sync::atomic::AtomicBool,
    }

    impl Counting {
        fn new(delay: Duration) -> Arc<Self> {
            Arc::new(Counting { searches: AtomicUsize::new(0), delay, hangs: false.into() })
        }
    }

    #[async_trait]
    impl Provider for Counting {
        fn name(&self) -> ProviderName {
            ProviderName::Vastai
        }
        async fn search_offers(&self, _: &OfferQuery) -> Result<Vec<Offer>, ProviderError> {
            self.searches.fetch_add(1, Ordering::SeqCst);
            if self.hangs.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay).await;
            Ok(vec![Offer {
                provider: ProviderName::Vastai,
                id: "1".into(),
                gpu_model: "RTX 4090".into(),
                gpu_count: 1,
                vram_gb: 24,
                cuda_version: None,
                driver_version: None,
                price_per_hour: 0.3,
                reliability: None,
                location: None,
                country: None,
                download_mbps: None,
                upload_mbps: None,
                interruptible: false,
                bid_per_hour: None,
                host_id: None,
            }])
        }
        async fn create_instance(&self, _: &CreateRequest) -> Result<Instance, ProviderError> {
            unimplemented!()
        }
        async fn get_instance(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
            unimplemented!()
        }
        async fn list_instances(&self, _: &[String]) -> Result<Vec<Instance>, ProviderError> {
            unimplemented!()
        }
        async fn destroy_instance(&self, _: &str) -> Result<crate::provider::Gone, ProviderError> {
            unimplemented!()
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_sessions_shares_one_search() {
        let market = Counting::new(Duration::from_secs(1));
        let provider: Arc<dyn Provider> = market.clone();
        let cache = OfferCache::default();
        let query = OfferQuery::default();
        let answers = futures::future::join_all((0..50).map(|_| cache.search(&provider, &query, TIMEOUT))).await;
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|offers| offers.len() == 1)));
        assert_eq!(market.searches.load(Ordering::SeqCst), 1);
        cache.search(&provider, &query, TIMEOUT).await.unwrap();
        assert_eq!(market.searches.load(Ordering::SeqCst), 1, "fresh: answered from the cache");
        tokio::time::sleep(Duration::from_secs(16)).await;
        cache.search(&provider, &query, TIMEOUT).await.unwrap();
        assert_eq!(market.searches.load(Ordering::SeqCst), 2, "stale after Vast's 15 s");
        cache.invalidate(ProviderName::Vastai);
        cache.search(&provider, &query, TIMEOUT).await.unwrap();
        assert_eq!(market.searches.load(Ordering::SeqCst), 3, "invalidated");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_marketplace_is_waited_on_once_not_by_every_session() {
        let market = Counting::new(Duration::ZERO);
        market.hangs.store(true, Ordering::SeqCst);
        let provider: Arc<dyn Provider> = market.clone();
        let cache = Arc::new(OfferCache::default());
        let query = OfferQuery::default();
        let first = cache.search(&provider, &query, TIMEOUT).await;
        assert!(matches!(first, Err(ProviderError::Timeout { .. })), "{first:?}");

        // The failure is remembered; after it, one session looks again and the rest do not wait.
        tokio::time::sleep(FAILURE_TTL).await;
        let started = tokio::time::Instant::now();
        let prober = tokio::spawn({
            let (cache, provider, query) = (cache.clone(), provider.clone(), query.clone());
            async move { cache.search(&provider, &query, TIMEOUT).await }
        });
        tokio::task::yield_now().await;
        for _ in 0..20 {
            assert!(cache.search(&provider, &query, TIMEOUT).await.is_err());
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "nobody else waited on the hanging marketplace");
        assert_eq!(market.searches.load(Ordering::SeqCst), 2, "one search at a time");
        assert!(prober.await.unwrap().is_err());
        assert_eq!(started.elapsed(), TIMEOUT);

        market.hangs.store(false, Ordering::SeqCst);
        tokio::time::sleep(FAILURE_TTL).await;
        assert!(cache.search(&provider, &query, TIMEOUT).await.is_ok(), "it answers again");
    }
}

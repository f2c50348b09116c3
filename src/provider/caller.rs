//! Who is calling a marketplace and how much the call matters. The controller
//! sets it around its calls (a task-local, so the `Provider` trait stays the
//! marketplace's own); each client's pacer reads it to order the calls that
//! wait for a slot: money first (destroys and what confirms them), then
//! creates, readiness lookups, searches, and the filters' market views last;
//! within one urgency, namespaces take turns.

use std::future::Future;
use std::sync::Arc;

/// How much a marketplace call matters, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Urgency {
    /// Destroys, the lookups that confirm them, and the listing that shows what still bills.
    Money,
    /// Creates (a session waits, nothing bills yet).
    Create,
    /// Readiness lookups and key attachment for machines being proven.
    Lookup,
    /// A rent's search.
    Search,
    /// A GpuOfferFilter's view of the market: nothing waits on it.
    Background,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Money => "money",
            Urgency::Create => "create",
            Urgency::Lookup => "lookup",
            Urgency::Search => "search",
            Urgency::Background => "background",
        }
    }
}

/// The caller of the marketplace calls made inside `calling`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub urgency: Urgency,
    /// The namespace the call is made for ("" for the operator's own work).
    pub tenant: Arc<str>,
}

tokio::task_local! {
    static CALLER: Caller;
}

/// The caller of the running task: a lookup for the operator unless set.
pub fn current() -> Caller {
    CALLER.try_with(Caller::clone).unwrap_or_else(|_| Caller { urgency: Urgency::Lookup, tenant: Arc::from("") })
}

/// Runs `work` with its marketplace calls made as `urgency` for `tenant`.
pub async fn calling<F: Future>(urgency: Urgency, tenant: &str, work: F) -> F::Output {
    CALLER.scope(Caller { urgency, tenant: Arc::from(tenant) }, work).await
}

/// Runs `work` as `urgency`, for the tenant of the running task.
pub async fn with_urgency<F: Future>(urgency: Urgency, work: F) -> F::Output {
    let tenant = current().tenant;
    CALLER.scope(Caller { urgency, tenant }, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_is_what_the_nearest_scope_says() {
        assert_eq!(current().urgency, Urgency::Lookup);
        calling(Urgency::Search, "team-a", async {
            assert_eq!(current(), Caller { urgency: Urgency::Search, tenant: Arc::from("team-a") });
            with_urgency(Urgency::Money, async {
                assert_eq!(current(), Caller { urgency: Urgency::Money, tenant: Arc::from("team-a") });
            })
            .await;
        })
        .await;
    }
}

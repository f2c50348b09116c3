//! The market: every configured marketplace searched at once, offers filtered
//! against the requirements and ranked.

pub mod ask;
pub mod bad_hosts;
pub mod cache;
pub mod filter;
pub mod merge;
pub mod rank;
pub mod search;

pub use bad_hosts::BadHosts;
pub use cache::OfferCache;
pub use filter::{Matcher, cuda_at_least, matches};
pub use merge::merge;
pub use rank::rank;
pub use search::{MarketView, OFFERS_PER_MARKETPLACE, ProviderFailure, search, search_cached};

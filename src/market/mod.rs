//! The market: every configured marketplace searched at once, offers filtered
//! against the requirements and ranked.

pub mod filter;
pub mod rank;
pub mod search;

pub use filter::{cuda_at_least, matches};
pub use rank::rank;
pub use search::{MarketView, ProviderFailure, search};

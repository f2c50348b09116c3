//! gpu-shopper: a Kubernetes operator that rents GPUs from cheap marketplaces,
//! proves they work, and never leaves one billing.

pub mod cli;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod http;
pub mod inventory;
pub mod keys;
pub mod market;
pub mod metrics;
pub mod probe;
pub mod provider;
pub mod simulator;
pub mod telemetry;

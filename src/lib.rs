//! gpu-shopper: a Kubernetes operator that rents GPUs from cheap marketplaces,
//! proves they work, and never leaves one billing.
//!
//! Layers, top to bottom: the processes (`controller`, `simulator`, `cli`),
//! then what they share (`inventory`, `market`, `probe`, `keys`), then the
//! marketplace clients (`provider`), then the API types and units (`crd`,
//! `units`). Arrows run downward only: when two modules need the same thing it
//! moves down to the module that owns it, and no two files import each other,
//! directly or around a circle (`tests/architecture.rs` reads the source and
//! fails on any circle). A readiness stage is one condition and one file
//! (`controller/session/stages/`), and never names a sibling.

pub mod cli;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod gateway;
pub mod http;
pub mod inventory;
pub mod keys;
pub mod market;
pub mod metrics;
pub mod probe;
pub mod provider;
pub mod simulator;
pub mod telemetry;
pub mod transfer;
pub mod units;

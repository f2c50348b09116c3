//! Proving a machine works: SSH logins and commands (the readiness stages
//! build on this).

pub mod nvidia;
pub mod ssh;

//! Proving a machine works: SSH logins and commands, `nvidia-smi`, and the
//! model server's answer (the readiness stages build on this).

pub mod inference;
pub mod nvidia;
pub mod ssh;

//! Moving a Job's data without carrying it: the operator signs short-lived
//! URLs with a bucket's credentials (which never leave the cluster), and the
//! machine downloads its inputs and uploads its outputs itself over them. The
//! operator only lists, creates and completes multipart uploads, and confirms
//! what arrived.
//!
//! `store`: one bucket and its credentials (signing with rusty-s3, not by hand).
//! `script`: the shell the machine runs to fetch and to upload, with progress
//! and results in files the operator reads over SSH.

pub mod script;
pub mod store;

//! The commands users run (also as the kubectl plugin `kubectl gpu-shopper`):
//! the live market, SSH into a session, costs, a readable session status, and
//! waiting for a session. They take kubectl's flags (`--context`,
//! `--kubeconfig`, `-n`, `-o`).

pub mod cost;
pub mod cp;
pub mod doctor;
pub mod endpoint;
pub mod guard;
pub mod logs;
pub mod offers;
pub mod output;
pub mod port_forward;
pub mod ssh;
pub mod ssh_config;
pub mod status;
mod table;
pub mod terminal;
pub mod wait;

mod cluster;
pub mod complete;
mod error;
mod flags;

pub use cluster::{client, cluster_dir_name, namespace};
pub use error::CliError;
pub use flags::{GlobalFlags, set_globals};
pub(crate) use flags::{parse_duration, parse_provider};

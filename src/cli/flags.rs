//! kubectl's own flags, read once before a command runs, and the parsers of
//! the flags several commands share.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::output;

/// kubectl's own flags, accepted before or after any command.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GlobalFlags {
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    pub output: Option<output::Format>,
    /// Act as this user (impersonation, as kubectl --as).
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Act with this group too (repeatable, as kubectl --as-group).
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_group: Vec<String>,
    /// Longest time one request to the API server may take ("0" waits as long as it takes; as kubectl).
    #[arg(long = "request-timeout", global = true, value_name = "DURATION", value_parser = parse_request_timeout)]
    pub request_timeout: Option<std::time::Duration>,
}

/// kubectl's `--request-timeout`: a duration ("30s", "2m") or a bare number of seconds; "0" is no limit.
fn parse_request_timeout(text: &str) -> Result<std::time::Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(if seconds == 0 { std::time::Duration::MAX } else { std::time::Duration::from_secs(seconds) });
    }
    parse_duration(text)
}

/// `--provider NAME` of every command.
pub(crate) fn parse_provider(text: &str) -> Result<crate::crd::ProviderName, String> {
    crate::crd::ProviderName::ALL
        .into_iter()
        .find(|p| p.as_str() == text)
        .ok_or_else(|| format!("unknown marketplace {text:?}: use vastai, tensordock or runpod"))
}

/// `--timeout 90s|30m|2h` of every command.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::crd::duration::parse(text).ok_or_else(|| format!("{text:?} is not a duration such as 90s, 30m or 2h"))
}

static GLOBALS: OnceLock<GlobalFlags> = OnceLock::new();

/// Records the global flags (once, before a command runs).
pub fn set_globals(flags: GlobalFlags) {
    output::choose(flags.output);
    let _ = GLOBALS.set(flags);
}

pub fn globals() -> &'static GlobalFlags {
    GLOBALS.get_or_init(GlobalFlags::default)
}

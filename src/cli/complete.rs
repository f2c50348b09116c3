//! Completion of `kubectl gpu-shopper ...` under kubectl (1.26 and later): for a
//! plugin `kubectl-gpu_shopper`, kubectl runs `kubectl_complete-gpu_shopper` with
//! the words typed so far and the word being typed (possibly ""), and reads one
//! candidate per line, then `:<directive>` (Cobra's: 4 = no file names). The same
//! binary answers when it is run by that name.

use clap::Command;
use kube::Api;
use kube::api::ListParams;

use crate::crd::GpuSession;

/// Cobra's ShellCompDirectiveNoFileComp.
const NO_FILES: u8 = 4;
/// Cobra's ShellCompDirectiveDefault: the shell may complete file names.
const FILES: u8 = 0;

/// Commands whose first argument is a session's name.
const TAKE_A_SESSION: &[&str] = &["status", "ssh", "logs", "wait", "endpoint", "port-forward", "ssh-config"];

/// The candidates for the last of `words` (the word being typed), and the directive.
pub async fn candidates(root: &Command, words: &[String]) -> (Vec<String>, u8) {
    let Some((partial, typed)) = words.split_last() else { return (Vec::new(), NO_FILES) };
    let (subcommand, positionals, namespace) = read(root, typed);
    let Some(subcommand) = subcommand.and_then(|name| root.find_subcommand(&name).cloned()) else {
        let names = if partial.starts_with('-') {
            long_flags(root)
        } else {
            root.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name().to_string()).collect()
        };
        return (starting_with(names, partial), NO_FILES);
    };
    if partial.starts_with('-') {
        let mut flags = long_flags(&subcommand);
        flags.extend(long_flags(root));
        return (starting_with(flags, partial), NO_FILES);
    }
    let name = subcommand.get_name();
    if name == "cp" {
        return (Vec::new(), FILES); // SESSION:PATH or a local file
    }
    if TAKE_A_SESSION.contains(&name) && positionals == 0 {
        return (starting_with(session_names(namespace).await, partial), NO_FILES);
    }
    (Vec::new(), NO_FILES)
}

/// The subcommand typed, how many of its positional arguments, and `-n`'s value.
fn read(root: &Command, typed: &[String]) -> (Option<String>, usize, Option<String>) {
    let (mut subcommand, mut positionals, mut namespace) = (None, 0, None);
    let mut words = typed.iter();
    while let Some(word) = words.next() {
        if let Some(flag) = word.strip_prefix('-') {
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (flag, None),
            };
            let takes_value = takes_value(root, subcommand.as_deref(), flag.trim_start_matches('-'));
            let value = if takes_value && inline.is_none() { words.next().cloned() } else { inline };
            if matches!(flag, "n" | "-namespace") {
                namespace = value;
            }
        } else if subcommand.is_none() {
            subcommand = Some(word.clone());
        } else {
            positionals += 1;
        }
    }
    (subcommand, positionals, namespace)
}

fn takes_value(root: &Command, subcommand: Option<&str>, flag: &str) -> bool {
    let commands = [Some(root), subcommand.and_then(|s| root.find_subcommand(s))];
    commands.into_iter().flatten().flat_map(|c| c.get_arguments()).any(|arg| {
        let named = arg.get_long() == Some(flag) || arg.get_short().is_some_and(|s| flag == s.to_string());
        named && arg.get_action().takes_values()
    })
}

fn long_flags(command: &Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .chain(["--help".to_string()])
        .collect()
}

fn starting_with(mut names: Vec<String>, partial: &str) -> Vec<String> {
    names.retain(|n| n.starts_with(partial));
    names.sort();
    names.dedup();
    names
}

/// The sessions of the namespace (the flag's, else the context's); none when the cluster cannot say.
async fn session_names(namespace: Option<String>) -> Vec<String> {
    let namespace = super::namespace(namespace).await;
    let Ok(client) = super::client().await else { return Vec::new() };
    let sessions: Api<GpuSession> = Api::namespaced(client, &namespace);
    match sessions.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items.into_iter().filter_map(|s| s.metadata.name).collect(),
        Err(_) => Vec::new(),
    }
}

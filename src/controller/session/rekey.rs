//! Re-keying a running machine on request: a user sets the annotation
//! `gpushopper.dev/rekey` to a new value; a fresh key pair replaces the old one
//! on the machine and in the Secret, and the old key stops logging in.
//!
//! Order matters, so that no crash can lock the session out: the new pair is
//! stored in the Secret (as `-next`) before it goes on the machine; the old key
//! is removed from the machine only by a login with the new one; the Secret's
//! main pair is swapped last. Each step is safe to repeat.

use kube::ResourceExt;

use super::login::run_on_machine;
use super::secret::{self, SessionKey};
use super::step::Step;
use crate::crd::session::RekeyStatus;
use crate::error::Result;
use crate::keys;
use crate::probe::ssh::SshError;

/// Set to any new value to ask for a fresh key on a running machine.
pub const REKEY_ANNOTATION: &str = "gpushopper.dev/rekey";

/// The annotation's value when it asks for a re-key not yet done.
fn pending_request(step: &Step<'_>) -> Option<String> {
    let request = step.session.annotations().get(REKEY_ANNOTATION)?.trim().to_string();
    let done = step.status.rekey.as_ref().is_some_and(|r| r.done && r.request == request);
    (!request.is_empty() && !done).then_some(request)
}

/// Carries out a pending re-key. Returns the key that logs in afterwards; a
/// failure is recorded in `status.rekey` and retried on the next look.
pub async fn step(step: &mut Step<'_>, current: SessionKey) -> Result<SessionKey> {
    let Some(request) = pending_request(step) else { return Ok(current) };
    let next = secret::next_key(step.session, step.ctx).await?;
    match swap_on_machine(step, &current, &next).await {
        Ok(()) => {
            secret::promote_next_key(step.session, step.ctx, &next).await?;
            let fingerprint = keys::parse_public(&next.public_openssh).ok().map(|k| keys::fingerprint(&k));
            let message = "a new key is on the machine and in the Secret; the old key no longer logs in".to_string();
            step.event(false, "Rekeyed", format!("{message} (request {request:?})"));
            step.status.rekey = Some(RekeyStatus {
                request,
                done: true,
                message,
                completed_at: Some(step.time()),
                key_fingerprint: fingerprint,
            });
            Ok(next)
        }
        Err(problem) => {
            let message = format!("not yet: {problem}; will retry");
            if step.status.rekey.as_ref().is_none_or(|r| r.request != request || r.message != message) {
                step.event(true, "RekeyFailed", &message);
            }
            step.status.rekey =
                Some(RekeyStatus { request, done: false, message, completed_at: None, key_fingerprint: None });
            Ok(current)
        }
    }
}

/// Puts `next` on the machine and takes `current` off it, using `next` to do the taking off.
async fn swap_on_machine(step: &Step<'_>, current: &SessionKey, next: &SessionKey) -> Result<(), String> {
    let next_body = key_body(&next.public_openssh)?;
    let current_body = key_body(&current.public_openssh)?;
    let next_line = key_line(&next.public_openssh)?;
    // A crash after the old key was removed leaves only `next` working: then it is already on.
    if run_on_machine(step, next, "true").await.is_err() {
        let add = for_every_account(&format!(
            "umask 077; mkdir -p $HOME/.ssh && touch $HOME/.ssh/authorized_keys && \
             (grep -qF '{next_body}' $HOME/.ssh/authorized_keys || printf '%s\\n' '{next_line}' >> $HOME/.ssh/authorized_keys)"
        ));
        expect_success(run_on_machine(step, current, &add).await, "adding the new key")?;
    }
    let remove = for_every_account(&format!(
        "umask 077; f=$HOME/.ssh/authorized_keys; [ -f \"$f\" ] || exit 0; \
         {{ grep -vF '{current_body}' \"$f\" || true; }} > \"$f.rekey\" && mv \"$f.rekey\" \"$f\""
    ));
    expect_success(run_on_machine(step, next, &remove).await, "removing the old key with the new one")?;
    match run_on_machine(step, current, "true").await {
        Err(SshError::AuthRejected { .. }) => Ok(()),
        Ok(_) => Err("the old key still logs in (is it also in another authorized_keys file?)".into()),
        Err(other) => Err(format!("could not check that the old key is refused: {other}")),
    }
}

/// Runs `script` for the login user and, where the login user is not root and
/// may sudo, for root too: some marketplaces' keys are installed in both
/// (TensorDock's cloud-init writes `root` and `user`), and an old key left in
/// either still opens the machine.
fn for_every_account(script: &str) -> String {
    let quoted = format!("'{}'", script.replace('\'', r"'\''"));
    format!(
        "sh -c {quoted} && if [ \"$(id -u)\" != 0 ] && sudo -n true 2>/dev/null; then sudo -n env HOME=/root sh -c {quoted}; fi"
    )
}

fn expect_success(
    result: std::result::Result<crate::probe::ssh::CommandOutput, SshError>,
    what: &str,
) -> Result<(), String> {
    match result {
        Ok(out) if out.exit_code == Some(0) => Ok(()),
        Ok(out) => Err(format!("{what} exited with {:?}: {}", out.exit_code, out.stderr.trim())),
        Err(error) => Err(format!("{what}: {error}")),
    }
}

/// "ssh-ed25519 AAAA…" without the comment: safe inside single quotes (base64 has none).
fn key_line(public_openssh: &str) -> Result<String, String> {
    let mut fields = public_openssh.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(body)) if is_shell_safe(kind) && is_shell_safe(body) => Ok(format!("{kind} {body}")),
        _ => Err("the public key in the Secret is not an OpenSSH key line".into()),
    }
}

fn key_body(public_openssh: &str) -> Result<String, String> {
    key_line(public_openssh).map(|line| line.split_once(' ').map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn is_shell_safe(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '@' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_line_drops_the_comment_and_refuses_anything_that_could_break_out_of_quotes() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOj+ gpu-shopper ns/box";
        assert_eq!(key_line(line).unwrap(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOj+");
        assert_eq!(key_body(line).unwrap(), "AAAAC3NzaC1lZDI1NTE5AAAAIOj+");
        assert!(key_line("ssh-ed25519 AAAA'; rm -rf ~; '").is_err());
        assert!(key_line("").is_err());
    }
}

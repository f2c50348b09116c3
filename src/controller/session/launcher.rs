//! What the operator runs on a machine to start its work: the start script and
//! the workload command, in the operator's own working directory, once.

use kube::ResourceExt;

use super::step::Step;

/// `text` as one shell word, whatever it holds.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The operator's own working directory on the machine for this session.
pub fn work_dir(step: &Step<'_>) -> String {
    format!("$HOME/.gpu-shopper/{}", step.session.uid().unwrap_or_default())
}

/// The file a workload's stdout and stderr go to, in the working directory.
pub const WORKLOAD_LOG: &str = "job.log";
/// The env file of values from Secrets and ConfigMaps (0600), sourced before the start script and workload.
pub const SECRET_ENV: &str = "secret.env";

/// Starts the start script and the workload command in the background, once.
pub fn launcher(step: &Step<'_>) -> String {
    let spec = &step.session.spec;
    let dir = work_dir(step);
    let start = spec.start_script.clone().unwrap_or_default();
    let command = spec.workload.command.clone().unwrap_or_default();
    format!(
        "D=\"{dir}\"; mkdir -p \"$D\" && cd \"$D\" && if [ ! -e started ]; then touch started; \
         printf '%s\\n' {start} > start.sh; printf '%s\\n' {command} > workload.sh; \
         nohup sh -c 'if [ -f ./secret.env ]; then . ./secret.env; fi; sh ./start.sh > start.log 2>&1; sh ./workload.sh > job.log 2>&1; echo $? > exit_code.tmp; mv exit_code.tmp exit_code' \
         > /dev/null 2>&1 < /dev/null & fi; echo launched",
        start = shell_quote(&start),
        command = shell_quote(&command),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("echo 'hi'"), r"'echo '\''hi'\'''");
    }
}

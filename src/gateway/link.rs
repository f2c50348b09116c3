//! The gateway's one SSH login to the session's machine, kept while the
//! session names that machine and replaced when it names another. The host key
//! must be the one pinned in the session's status: a machine that presents
//! another is refused (and reported), never served.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::GatewayMetrics;
use super::report::Reporter;
use super::source::{Source, Target};
use crate::probe::ssh::{self, Connection, SshError};

/// Time allowed to one login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a kept login is checked for being closed, and the longest wait between two tries.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What is being served now.
pub struct Serving {
    pub connection: Arc<Connection>,
    pub target: Target,
}

#[derive(Clone)]
pub struct Link {
    current: Arc<Mutex<Option<Arc<Serving>>>>,
    /// When the gateway last had no machine (None while it has one), for the metric.
    without_since: Arc<Mutex<Option<Instant>>>,
    metrics: Arc<GatewayMetrics>,
}

impl Link {
    /// Starts following the source's machine.
    pub fn start(source: Source, metrics: Arc<GatewayMetrics>, reporter: Option<Reporter>) -> Link {
        let link = Link { current: Arc::default(), without_since: Arc::new(Mutex::new(Some(Instant::now()))), metrics };
        let follower = link.clone();
        tokio::spawn(async move { follower.follow(source, reporter).await });
        link
    }

    /// The machine and login serving now, if any.
    pub fn serving(&self) -> Option<Arc<Serving>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Seconds without a machine so far (the part of the current gap not yet counted).
    pub fn count_time_without_machine(&self) {
        let mut since = self.without_since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(start) = since.as_mut() {
            let now = Instant::now();
            self.metrics.seconds_without_machine.inc_by(now.duration_since(*start).as_secs_f64());
            *start = now;
        }
    }

    fn set(&self, serving: Option<Arc<Serving>>) {
        self.count_time_without_machine();
        let mut since = self.without_since.lock().unwrap_or_else(|p| p.into_inner());
        *since = if serving.is_some() { None } else { since.or(Some(Instant::now())) };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = serving;
    }

    /// Logs in to each machine the session names, keeps the login while it stands, and
    /// drops it when the session names another machine or none.
    async fn follow(self, source: Source, reporter: Option<Reporter>) {
        let mut targets = source.targets();
        let mut retry = CHECK_EVERY;
        let mut reported_changed_key: Option<Target> = None;
        loop {
            let target = targets.borrow_and_update().clone();
            let Some(target) = target else {
                self.set(None);
                // The no-machine time is brought up to date while waiting (and on every /metrics).
                loop {
                    tokio::select! {
                        changed = targets.changed() => {
                            if changed.is_err() { return; }
                            break;
                        }
                        _ = tokio::time::sleep(CHECK_EVERY) => self.count_time_without_machine(),
                    }
                }
                continue;
            };
            match self.login(&source, &target).await {
                Ok(connection) => {
                    retry = CHECK_EVERY;
                    self.metrics.reconnects.inc();
                    tracing::info!(instance = %target.instance, host = %target.host, port = target.port, "logged in to the machine; serving");
                    let connection = Arc::new(connection);
                    self.set(Some(Arc::new(Serving { connection: connection.clone(), target: target.clone() })));
                    if let Some(reporter) = &reporter {
                        reporter.serving(Some(&target.instance)).await;
                    }
                    // Kept until the machine changes or the login drops.
                    loop {
                        tokio::select! {
                            changed = targets.changed() => {
                                if changed.is_err() { return; }
                                if targets.borrow().as_ref() != Some(&target) { break; }
                            }
                            _ = tokio::time::sleep(CHECK_EVERY) => {
                                self.count_time_without_machine();
                                if !connection.is_open() {
                                    tracing::warn!(instance = %target.instance, "the login to the machine dropped; logging in again");
                                    break;
                                }
                            }
                        }
                    }
                    self.set(None);
                    if let Some(reporter) = &reporter {
                        reporter.serving(None).await;
                    }
                }
                Err(error) => {
                    self.set(None);
                    if let SshError::HostKeyChanged { .. } = &error
                        && reported_changed_key.as_ref() != Some(&target)
                    {
                        tracing::error!(instance = %target.instance, %error, "refusing the machine: its host key is not the pinned one");
                        if let Some(reporter) = &reporter {
                            reporter.host_key_changed(&error.to_string()).await;
                        }
                        reported_changed_key = Some(target.clone());
                    } else {
                        tracing::warn!(instance = %target.instance, %error, "cannot log in to the machine yet");
                    }
                    tokio::select! {
                        _ = targets.changed() => {}
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn login(&self, source: &Source, target: &Target) -> Result<Connection, SshError> {
        let addr = format!("{}:{}", target.host, target.port);
        // The private key is read for this login and dropped with it.
        let key = source.private_key().await.map_err(|message| SshError::Connect { addr, message })?;
        let to = ssh::Target {
            host: &target.host,
            port: target.port,
            user: &target.user,
            pinned_fingerprint: Some(&target.fingerprint),
        };
        ssh::connect(&to, Arc::new(key), LOGIN_TIMEOUT).await
    }
}

//! Where the model's machine is and which keys to use. In the cluster: the
//! gateway's own GpuSession (watched by name, the only one its Role lets it
//! read), its key Secret (read when a login needs it, never held), and the API
//! key Secret (read again every half minute, so a rotated key takes effect).
//! Outside it (`--ssh`): a fixed machine and key files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use russh::keys::PrivateKey;
use tokio::sync::watch;

use super::args::{GatewayArgs, GatewayError};
use crate::crd::GpuSession;
use crate::crd::conditions::{is_true, types};

/// The machine to carry requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The host key pinned in the session's status: no other is accepted.
    pub fingerprint: String,
    /// The marketplace's instance id (reported in the Lease).
    pub instance: String,
}

impl Target {
    /// The machine a session status names, once it is Ready and its host key pinned.
    pub fn of(session: &GpuSession) -> Option<Target> {
        let status = session.status.as_ref()?;
        if !is_true(&status.conditions, types::READY) || status.released_at.is_some() {
            return None;
        }
        let ssh = status.ssh.as_ref()?;
        Some(Target {
            host: ssh.host.clone(),
            port: ssh.port,
            user: ssh.user.clone(),
            fingerprint: ssh.host_key_fingerprint.clone()?,
            instance: status.instance_id.clone().unwrap_or_default(),
        })
    }
}

/// The cluster side a gateway reports to.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub session: String,
}

#[derive(Clone)]
pub struct Source {
    targets: watch::Receiver<Option<Target>>,
    api_key: Arc<Mutex<Option<Arc<str>>>>,
    keys: Keys,
    pub cluster: Option<Cluster>,
}

#[derive(Clone)]
enum Keys {
    Secret { secrets: Box<Api<Secret>>, name: String },
    File(std::path::PathBuf),
}

/// How often the API key is read again.
const API_KEY_REFRESH: Duration = Duration::from_secs(30);

impl Source {
    pub async fn from_args(args: &GatewayArgs) -> Result<Source, GatewayError> {
        match (&args.ssh, &args.session) {
            (Some(machine), _) => Self::fixed(args, machine),
            (None, Some(session)) => Self::cluster(args, session).await,
            (None, None) => Err(GatewayError::Setup("--session (GATEWAY_SESSION) or --ssh is required".into())),
        }
    }

    fn fixed(args: &GatewayArgs, machine: &str) -> Result<Source, GatewayError> {
        let setup = |m: String| GatewayError::Setup(m);
        let (user, at) =
            machine.split_once('@').ok_or_else(|| setup(format!("--ssh {machine:?}: use user@host:port")))?;
        let (host, port) =
            at.rsplit_once(':').ok_or_else(|| setup(format!("--ssh {machine:?}: use user@host:port")))?;
        let port = port.parse().map_err(|_| setup(format!("--ssh {machine:?}: the port is not a number")))?;
        let target = Target {
            host: host.to_string(),
            port,
            user: user.to_string(),
            fingerprint: args.host_key.clone().unwrap_or_default(),
            instance: "fixed".into(),
        };
        let key_file = args.api_key_file.as_ref().expect("clap requires it with --ssh");
        let api_key = std::fs::read_to_string(key_file)
            .map_err(|e| setup(format!("cannot read the API key file {}: {e}", key_file.display())))?;
        let (_, targets) = watch::channel(Some(target));
        Ok(Source {
            targets,
            api_key: Arc::new(Mutex::new(Some(Arc::from(api_key.trim())))),
            keys: Keys::File(args.ssh_key_file.clone().expect("clap requires it with --ssh")),
            cluster: None,
        })
    }

    async fn cluster(args: &GatewayArgs, session: &str) -> Result<Source, GatewayError> {
        let client = Client::try_default().await.map_err(|e| GatewayError::Cluster(e.to_string()))?;
        let namespace = args.namespace.clone();
        let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let (publish, targets) = watch::channel(None);
        // The Role names this session only: a watch of it by name is all the gateway may do.
        let config = watcher::Config::default().fields(&format!("metadata.name={session}"));
        let stream = watcher(sessions, config).default_backoff().applied_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(session) => {
                        let target = Target::of(&session);
                        publish.send_if_modified(|current| {
                            let changed = *current != target;
                            *current = target.clone();
                            changed
                        });
                    }
                    Err(error) => tracing::warn!(%error, "watching the session failed; retrying"),
                }
            }
        });
        let api_key = Arc::new(Mutex::new(None));
        if let Some(name) = args.api_key_secret.clone() {
            let (secrets, field, api_key) = (secrets.clone(), args.api_key_field.clone(), api_key.clone());
            tokio::spawn(async move {
                loop {
                    match secrets.get(&name).await {
                        Ok(secret) => {
                            let key = secret_field(&secret, &field).map(|k| Arc::from(k.trim()));
                            if key.is_none() {
                                tracing::warn!(secret = %name, %field, "the API key Secret has no such key: every request is refused");
                            }
                            *api_key.lock().unwrap_or_else(|p| p.into_inner()) = key;
                        }
                        Err(error) => tracing::warn!(secret = %name, %error, "cannot read the API key Secret"),
                    }
                    tokio::time::sleep(API_KEY_REFRESH).await;
                }
            });
        }
        Ok(Source {
            targets,
            api_key,
            keys: Keys::Secret { secrets: Box::new(secrets), name: format!("{session}-ssh") },
            cluster: Some(Cluster { client, namespace, session: session.to_string() }),
        })
    }

    /// The machine to serve, as it changes.
    pub fn targets(&self) -> watch::Receiver<Option<Target>> {
        self.targets.clone()
    }

    /// The API key clients must send, once read (None: every request is refused).
    pub fn api_key(&self) -> Option<Arc<str>> {
        self.api_key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The private key that logs in: read for each login and dropped after it.
    pub async fn private_key(&self) -> Result<PrivateKey, String> {
        let text = match &self.keys {
            Keys::Secret { secrets, name } => {
                let secret = secrets.get(name).await.map_err(|e| format!("cannot read the key Secret {name}: {e}"))?;
                secret_field(&secret, crate::keys::SECRET_PRIVATE_KEY)
                    .ok_or_else(|| format!("the key Secret {name} has no private key"))?
            }
            Keys::File(path) => std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        };
        crate::keys::parse_private(&secrecy::SecretString::from(text)).map_err(|e| e.to_string())
    }
}

fn secret_field(secret: &Secret, field: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(field)?;
    String::from_utf8(bytes.0.clone()).ok()
}

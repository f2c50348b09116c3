//! The session's SSH key pair lives in a Secret it owns (`<name>-ssh`),
//! created before any marketplace is called, so the key can always be read
//! again. Host, port and user are added once known.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use secrecy::SecretString;

use crate::controller::context::Context;
use crate::controller::scope::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::crd::GpuSession;
use crate::error::{Error, Result};
use crate::keys;

pub use crate::keys::{SECRET_PRIVATE_KEY as PRIVATE_KEY, SECRET_PUBLIC_KEY as PUBLIC_KEY};
/// A re-key's new pair, stored before it goes on the machine and promoted after.
const NEXT_PRIVATE_KEY: &str = "ssh-privatekey-next";
const NEXT_PUBLIC_KEY: &str = "ssh-publickey-next";

pub fn secret_name(session: &GpuSession) -> String {
    format!("{}-ssh", session.name_any())
}

fn secrets(session: &GpuSession, ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default())
}

/// A new key pair whose comment names the session it belongs to.
fn new_pair(session: &GpuSession) -> Result<SessionKey> {
    Ok(keys::generate(&format!("gpu-shopper {}/{}", session.namespace().unwrap_or_default(), session.name_any()))?)
}

/// The session's key pair, as kept in its Secret.
pub type SessionKey = keys::KeyPair;

/// Whether `secret` belongs to `session` (an owner reference with its uid).
fn owned_by(secret: &Secret, session: &GpuSession) -> bool {
    let uid = session.uid().unwrap_or_default();
    secret.owner_references().iter().any(|owner| owner.uid == uid)
}

/// The session's key pair, and whether the Secret was created just now.
pub type EnsuredKey = (SessionKey, bool);

/// The session's key pair, creating the Secret on first use. `Ok(Err(why))`: a
/// Secret of that name exists but belongs to something else; it is left as it is.
pub async fn ensure(session: &GpuSession, ctx: &Context) -> Result<std::result::Result<EnsuredKey, String>> {
    let namespace = session.namespace().unwrap_or_default();
    let secrets = secrets(session, ctx);
    let name = secret_name(session);
    // Read when needed, never cached: a private key is in memory for one reconcile at most.
    if let Some(existing) = secrets.get_opt(&name).await? {
        if !owned_by(&existing, session) {
            return Ok(Err(format!(
                "Secret {name:?} already exists and is not owned by this GpuSession: the operator will not use or overwrite it; delete or rename it, or rename the session"
            )));
        }
        return read(&existing, &name).map(|key| Ok((key, false)));
    }
    let pair = new_pair(session)?;
    // Like controller-runtime's SetControllerReference: a foreground deletion of the
    // session waits for its key. Needs `update` on gpusessions/finalizers (the chart's RBAC).
    let owner = OwnerReference {
        block_owner_deletion: Some(true),
        ..session.controller_owner_ref(&()).expect("a stored GpuSession has a name and uid")
    };
    let mut data = BTreeMap::new();
    data.insert(
        PRIVATE_KEY.to_string(),
        ByteString(secrecy::ExposeSecret::expose_secret(&pair.private_openssh).as_bytes().to_vec()),
    );
    data.insert(PUBLIC_KEY.to_string(), ByteString(pair.public_openssh.as_bytes().to_vec()));
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/ssh-auth".into()),
        data: Some(data),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => read(&created, &name).map(|key| Ok((key, true))),
        // Someone created it first: use it only if it is ours.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = secrets.get(&name).await?;
            if owned_by(&existing, session) {
                read(&existing, &name).map(|key| Ok((key, false)))
            } else {
                Ok(Err(format!("Secret {name:?} exists and is not owned by this GpuSession; it is left as it is")))
            }
        }
        Err(error) => Err(error.into()),
    }
}

fn read(secret: &Secret, name: &str) -> Result<SessionKey> {
    read_pair(secret, PUBLIC_KEY, PRIVATE_KEY).ok_or_else(|| Error::SecretIncomplete(name.into()))
}

fn read_pair(secret: &Secret, public_key: &str, private_key: &str) -> Option<SessionKey> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).map(|b| String::from_utf8_lossy(&b.0).into_owned());
    Some(SessionKey { public_openssh: text(public_key)?, private_openssh: SecretString::from(text(private_key)?) })
}

/// The re-key pair waiting in the Secret, or a new one stored there first: the
/// Secret always holds every key that may be on the machine, so a crash mid
/// re-key never locks the session out.
pub async fn next_key(session: &GpuSession, ctx: &Context) -> Result<SessionKey> {
    let secrets = secrets(session, ctx);
    let name = secret_name(session);
    if let Some(pending) = read_pair(&secrets.get(&name).await?, NEXT_PUBLIC_KEY, NEXT_PRIVATE_KEY) {
        return Ok(pending);
    }
    let pair = new_pair(session)?;
    let patch = serde_json::json!({"stringData": {
        NEXT_PRIVATE_KEY: secrecy::ExposeSecret::expose_secret(&pair.private_openssh),
        NEXT_PUBLIC_KEY: &pair.public_openssh,
    }});
    secrets.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(pair)
}

/// Makes the re-key pair the session's key, in one write.
pub async fn promote_next_key(session: &GpuSession, ctx: &Context, next: &SessionKey) -> Result<()> {
    let secrets = secrets(session, ctx);
    let encode = |text: &str| ByteString(text.as_bytes().to_vec());
    let patch = serde_json::json!({"data": {
        PRIVATE_KEY: encode(secrecy::ExposeSecret::expose_secret(&next.private_openssh)),
        PUBLIC_KEY: encode(&next.public_openssh),
        NEXT_PRIVATE_KEY: null,
        NEXT_PUBLIC_KEY: null,
    }});
    secrets.patch(&secret_name(session), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Adds where to log in (`host`, `port`, `user`) to the Secret.
pub async fn record_endpoint(session: &GpuSession, ctx: &Context, host: &str, port: u16, user: &str) -> Result<()> {
    let secrets = secrets(session, ctx);
    let patch = serde_json::json!({"stringData": {"host": host, "port": port.to_string(), "user": user}});
    secrets.patch(&secret_name(session), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The key Secret was deleted while the machine runs and a fresh pair was
/// stored: put the new key on the machine where the marketplace can (Vast
/// attaches keys through its API), and say what happened either way.
pub(crate) async fn key_secret_recreated(step: &mut super::step::Step<'_>, key: &SessionKey) {
    let (Some(provider), Some(id)) = (step.status.provider, step.status.instance_id.clone()) else { return };
    let attached = match step.ctx.provider(provider) {
        Some(client) if provider == crate::crd::ProviderName::Vastai => {
            client.ensure_ssh_key(&id, &key.public_openssh).await.is_ok()
        }
        _ => false,
    };
    let note = if attached {
        format!(
            "the key Secret was deleted while instance {id} ran; a new key pair was stored and attached to the machine through {provider}"
        )
    } else {
        format!(
            "the key Secret was deleted while instance {id} ran; a new key pair was stored, but {provider} cannot put it on a running machine and the old private key is gone: delete the session to get a machine with the new key"
        )
    };
    step.event(true, "KeySecretRecreated", note);
}

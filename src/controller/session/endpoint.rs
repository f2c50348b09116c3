//! An Inference session's in-cluster endpoint: a Service named after the
//! session, in front of a gateway Deployment (`gpu-shopper gateway`) that
//! carries requests over SSH to the model on the machine's loopback; the
//! gateway's ServiceAccount, a Role that lets it read only its own session and
//! key Secrets and renew its own Lease, the API key Secret (unless the user
//! names one), and optionally a NetworkPolicy. Everything is owned by the
//! session, so it all goes when the session goes. A name already taken by
//! something the session does not own is never overwritten: it is a condition.
//!
//! EndpointReady says whether the gateway serves the session's current
//! machine, from the Lease the gateway renews.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::step::Step;
use crate::controller::scope::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::crd::conditions::types;
use crate::crd::session::{
    API_KEY_FIELD, GATEWAY_RENEW_EVERY as RENEW_EVERY, GATEWAY_SERVING_ANNOTATION as SERVING_ANNOTATION,
    InferenceProbe, ServedEndpoint,
};
use crate::crd::{GpuSession, SessionPhase, WorkloadKind};
use crate::error::Result;

/// The port the gateway listens on inside its pod.
const GATEWAY_PORT: i32 = 8080;
/// How soon to look again while the gateway does not serve the machine yet.
const NOT_SERVING_POLL: Duration = Duration::from_secs(10);

/// Why the endpoint cannot be set up; nothing was overwritten.
struct Refused {
    reason: &'static str,
    message: String,
}

fn gateway_name(session: &GpuSession) -> String {
    format!("{}-gateway", session.name_any())
}

fn api_key_secret(session: &GpuSession, inference: &InferenceProbe) -> (String, String) {
    match &inference.api_key_secret_ref {
        Some(reference) => (reference.name.clone(), reference.key_or_default().to_string()),
        None => (format!("{}-api-key", session.name_any()), API_KEY_FIELD.to_string()),
    }
}

/// The in-cluster URL of the session's model.
fn url(session: &GpuSession, port: u16) -> String {
    format!("http://{}.{}.svc:{port}", session.name_any(), session.namespace().unwrap_or_default())
}

/// A Service name: a DNS-1035 label.
fn valid_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Sets the endpoint up once for an Inference session, before anything is
/// rented: `Some` when it cannot be (a name taken, the user's key missing), with
/// the session left Pending and nothing rented or overwritten.
pub async fn prepare(step: &mut Step<'_>) -> Result<Option<Action>> {
    let Some(inference) = inference_of(step.session) else { return Ok(None) };
    if !step.status.endpoints.is_empty() {
        return Ok(None);
    }
    match ensure_objects(step, &inference).await? {
        Ok(()) => {
            let port = inference.port_or_default();
            let served = url(step.session, port);
            step.status.endpoints =
                vec![ServedEndpoint { name: "model".into(), port, url: served.clone(), public_url: None }];
            let message = format!("{served} is set up; it serves once a machine is Ready");
            step.condition(types::ENDPOINT_READY, false, "WaitingForMachine", message);
            Ok(None)
        }
        Err(Refused { reason, message }) => {
            step.condition(types::ENDPOINT_READY, false, reason, message.clone());
            step.condition(types::READY, false, reason, message.clone());
            step.phase(SessionPhase::Pending, reason, message);
            Ok(Some(Action::requeue(Duration::from_secs(10))))
        }
    }
}

/// For a Ready Inference session: whether its gateway serves the current machine
/// (the gateway's Lease names it and was renewed lately). Looks again sooner while not.
pub async fn observe(step: &mut Step<'_>, action: Action) -> Result<Action> {
    let Some(inference) = inference_of(step.session) else { return Ok(action) };
    if matches!(step.status.phase, Some(SessionPhase::Succeeded | SessionPhase::Failed)) {
        step.condition(types::ENDPOINT_READY, false, "SessionEnded", "the session ended; the endpoint answers 503");
        return Ok(action);
    }
    let instance = step.status.instance_id.clone().unwrap_or_default();
    let leases: Api<Lease> = namespaced(step);
    let lease = leases.get_opt(&gateway_name(step.session)).await?;
    let Some(lease) = lease else {
        // Deleted by hand: set everything up again.
        step.status.endpoints.clear();
        prepare(step).await?;
        return Ok(Action::requeue(NOT_SERVING_POLL));
    };
    let serving = lease.annotations().get(SERVING_ANNOTATION).cloned().unwrap_or_default();
    let renewed = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let fresh = renewed.is_some_and(|at| step.seconds_since(at) < (RENEW_EVERY * 3).as_secs_f64());
    let port = inference.port_or_default();
    step.status.endpoints = vec![ServedEndpoint {
        name: "model".into(),
        port,
        url: url(step.session, port),
        public_url: public_url(step, port),
    }];
    if fresh && !instance.is_empty() && serving == instance {
        let message = format!("{} answers through the gateway, served by instance {instance}", url(step.session, port));
        step.condition(types::ENDPOINT_READY, true, "GatewayServing", message);
        Ok(action)
    } else {
        let why = if !fresh {
            format!("the gateway has not renewed its Lease lately: check the Deployment {}", gateway_name(step.session))
        } else {
            format!("the gateway does not serve instance {instance} yet (it serves {serving:?})")
        };
        step.condition(types::ENDPOINT_READY, false, "GatewayNotServing", why);
        // Sooner than a running session's usual look, so EndpointReady follows the gateway.
        Ok(Action::requeue(NOT_SERVING_POLL))
    }
}

/// The machine's public address of `port`, when `spec.ports` exposes it and the listing shows it.
fn public_url(step: &Step<'_>, port: u16) -> Option<String> {
    if !step.session.spec.ports.contains(&port) {
        return None;
    }
    let (provider, id) = (step.status.provider?, step.status.instance_id.as_deref()?);
    let since = step.status.rented_at.as_ref().map(|t| t.0)?;
    match step.ctx.inventory.presence(provider, id, since) {
        crate::inventory::Presence::Listed(instance) => {
            instance.endpoint(port).map(|e| format!("http://{}:{}", e.host, e.port))
        }
        _ => None,
    }
}

fn inference_of(session: &GpuSession) -> Option<InferenceProbe> {
    (session.spec.workload.kind == WorkloadKind::Inference).then(|| session.spec.workload.inference.clone()).flatten()
}

fn namespaced<K>(step: &Step<'_>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(step.ctx.client.clone(), &step.session.namespace().unwrap_or_default())
}

fn owner(session: &GpuSession) -> OwnerReference {
    session.controller_owner_ref(&()).expect("a stored GpuSession has a name and uid")
}

fn meta(session: &GpuSession, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: session.namespace(),
        owner_references: Some(vec![owner(session)]),
        labels: Some(labels(session)),
        ..Default::default()
    }
}

fn labels(session: &GpuSession) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        ("app.kubernetes.io/name".to_string(), "gpu-shopper-gateway".to_string()),
        ("app.kubernetes.io/instance".to_string(), session.name_any()),
    ])
}

fn selector(session: &GpuSession) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "gpu-shopper-gateway".to_string()),
        ("app.kubernetes.io/instance".to_string(), session.name_any()),
    ])
}

/// Creates `object` unless it exists; an existing one must be the session's own.
async fn ensure<K>(step: &Step<'_>, object: K) -> Result<std::result::Result<(), Refused>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = namespaced(step);
    let name = object.name_any();
    let uid = step.session.uid().unwrap_or_default();
    let owned = |existing: &K| existing.owner_references().iter().any(|o| o.uid == uid);
    let kind = K::kind(&());
    let taken = || Refused {
        reason: "EndpointNameTaken",
        message: format!(
            "{kind} {name:?} already exists and is not owned by this GpuSession: the operator will not overwrite it; delete or rename it, or rename the session"
        ),
    };
    match api.get_opt(&name).await? {
        Some(existing) if owned(&existing) => Ok(Ok(())),
        Some(_) => Ok(Err(taken())),
        None => match api.create(&PostParams::default(), &object).await {
            Ok(_) => Ok(Ok(())),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = api.get(&name).await?;
                Ok(if owned(&existing) { Ok(()) } else { Err(taken()) })
            }
            Err(error) => Err(error.into()),
        },
    }
}

async fn ensure_objects(step: &Step<'_>, inference: &InferenceProbe) -> Result<std::result::Result<(), Refused>> {
    let session = step.session;
    let name = session.name_any();
    if !valid_service_name(&name) {
        return Ok(Err(Refused {
            reason: "InvalidServiceName",
            message: format!(
                "an Inference session's Service is named after it, and {name:?} is not a Service name (at most 63 characters of a-z, 0-9 and '-', starting with a letter): rename the session"
            ),
        }));
    }
    let (key_secret, key_field) = api_key_secret(session, inference);
    if let Some(refused) = check_or_make_api_key(step, inference, &key_secret, &key_field).await? {
        return Ok(Err(refused));
    }
    let gateway = gateway_name(session);
    let port = inference.port_or_default();
    let spec = inference.gateway.clone().unwrap_or_default();
    let defaults = &step.ctx.config.gateway;
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": meta(session, &gateway)}))?;
    let role: Role = serde_json::from_value(json!({
        "metadata": meta(session, &gateway),
        "rules": [
            {"apiGroups": ["gpushopper.dev"], "resources": ["gpusessions"], "resourceNames": [name], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [format!("{name}-ssh"), key_secret], "verbs": ["get"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [gateway], "verbs": ["get", "patch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": meta(session, &gateway),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": gateway},
        "subjects": [{"kind": "ServiceAccount", "name": gateway, "namespace": session.namespace()}],
    }))?;
    let lease: Lease = serde_json::from_value(json!({"metadata": meta(session, &gateway), "spec": {}}))?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": meta(session, &gateway),
        "spec": {
            "replicas": spec.replicas.unwrap_or(defaults.replicas),
            "selector": {"matchLabels": selector(session)},
            "template": {
                "metadata": {"labels": labels(session)},
                "spec": {
                    "serviceAccountName": gateway,
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "gateway",
                        "image": defaults.image,
                        "args": ["gateway"],
                        "env": [
                            {"name": "GATEWAY_SESSION", "value": name},
                            {"name": "GATEWAY_NAMESPACE", "value": session.namespace()},
                            {"name": "GATEWAY_API_KEY_SECRET", "value": key_secret},
                            {"name": "GATEWAY_API_KEY_FIELD", "value": key_field},
                            {"name": "GATEWAY_LEASE", "value": gateway},
                            {"name": "GATEWAY_MODEL_PORT", "value": port.to_string()},
                            {"name": "GATEWAY_LISTEN", "value": format!("0.0.0.0:{GATEWAY_PORT}")},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        ],
                        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        "resources": spec.resources.clone().unwrap_or_else(|| defaults.resources.clone()),
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    }))?;
    let service: Service = serde_json::from_value(json!({
        "metadata": meta(session, &name),
        "spec": {
            "selector": selector(session),
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }))?;
    // The Service first: it is the one name a user may already have taken.
    if let Err(refused) = ensure(step, service).await? {
        return Ok(Err(refused));
    }
    for result in [
        ensure(step, account).await?,
        ensure(step, role).await?,
        ensure(step, binding).await?,
        ensure(step, lease).await?,
        ensure(step, deployment).await?,
    ] {
        if let Err(refused) = result {
            return Ok(Err(refused));
        }
    }
    let allowed = match (&spec.allowed_from, defaults.namespace_only) {
        (Some(peers), _) => Some(json!(peers)),
        (None, true) => Some(json!([{"podSelector": {}}])),
        (None, false) => None,
    };
    if let Some(from) = allowed {
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": meta(session, &gateway),
            "spec": {
                "podSelector": {"matchLabels": selector(session)},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": from, "ports": [{"port": GATEWAY_PORT}]}],
            },
        }))?;
        if let Err(refused) = ensure(step, policy).await? {
            return Ok(Err(refused));
        }
    }
    Ok(Ok(()))
}

/// The user's API key Secret must exist and hold the key; without a user's, the
/// operator's own `<name>-api-key` is made with a random key. The key is never
/// read into status, Events or logs.
async fn check_or_make_api_key(
    step: &Step<'_>,
    inference: &InferenceProbe,
    name: &str,
    field: &str,
) -> Result<Option<Refused>> {
    let secrets: Api<Secret> = namespaced(step);
    if inference.api_key_secret_ref.is_some() {
        return Ok(match secrets.get_opt(name).await? {
            None => Some(Refused {
                reason: "ApiKeySecretNotFound",
                message: format!(
                    "spec.workload.inference.apiKeySecretRef names Secret {name:?}, which does not exist in this namespace: create it or fix the name"
                ),
            }),
            Some(secret) if secret.data.as_ref().is_none_or(|d| d.get(field).is_none_or(|v| v.0.is_empty())) => {
                Some(Refused {
                    reason: "ApiKeyMissing",
                    message: format!(
                        "Secret {name:?} has no key {field:?} (or it is empty): add it, or set apiKeySecretRef.key"
                    ),
                })
            }
            Some(_) => None,
        });
    }
    let key = random_api_key();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": meta(step.session, name),
        "type": "Opaque",
        "stringData": {field: key},
    }))?;
    Ok(ensure(step, secret).await?.err())
}

/// 32 random bytes, URL-safe base64, with a prefix that says what it is.
fn random_api_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!("gs-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        assert!(valid_service_name("llama-inference"));
        assert!(!valid_service_name("Llama"));
        assert!(!valid_service_name("9lives"));
        assert!(!valid_service_name("a.b"));
        assert!(!valid_service_name(&"a".repeat(64)));
    }

    #[test]
    fn api_keys_are_long_random_and_distinct() {
        let (a, b) = (random_api_key(), random_api_key());
        assert!(a.starts_with("gs-") && a.len() > 40);
        assert_ne!(a, b);
    }
}

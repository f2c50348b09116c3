//! What a session brings to its machine from the cluster: environment values
//! from Secrets and ConfigMaps, and its inputs (ConfigMap and Secret keys as
//! files, URLs, bucket objects). Resolved by the operator, which reads the
//! Secrets and signs the bucket URLs; checked before anything is rented, so a
//! missing Secret, a missing object or wrong credentials cost nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};

use secrecy::ExposeSecret;

use super::step::Step;
use crate::crd::session::{Input, S3Location};
use crate::error::Result;
use crate::transfer::script::Fetch;
use crate::transfer::store::{Keys, Store, StoreError};

/// Why the session cannot go on with its sources (a reason and what to do).
#[derive(Debug, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// A small file written to the machine over SSH.
pub struct InlineFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Everything resolved: what goes over SSH, and what the machine fetches itself.
#[derive(Default)]
pub struct Resolved {
    /// `NAME=value` from Secrets and ConfigMaps (secret: written in a 0600 file, never logged).
    pub env: Vec<(String, secrecy::SecretString)>,
    pub files: Vec<InlineFile>,
    pub fetches: Vec<Fetch>,
}

/// Whether the session brings anything to the machine at all.
pub fn any(step: &Step<'_>) -> bool {
    let spec = &step.session.spec;
    spec.env.iter().any(|e| e.value_from.is_some()) || !spec.workload.inputs.is_empty()
}

/// Whether there is anything to check before renting (what is brought, and where outputs go).
pub fn to_check(step: &Step<'_>) -> bool {
    any(step) || !step.session.spec.workload.outputs.is_empty()
}

fn namespaced<K>(step: &Step<'_>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(step.ctx.client.clone(), &step.session.namespace().unwrap_or_default())
}

/// Reads every source; with `sign`, bucket objects get URLs signed for `lifetime`.
/// `Ok(Err(problem))`: a source is missing or refused (nothing should be rented).
pub async fn resolve(step: &Step<'_>, lifetime: Duration) -> Result<std::result::Result<Resolved, Problem>> {
    let mut resolved = Resolved::default();
    let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut maps: BTreeMap<String, Option<ConfigMap>> = BTreeMap::new();
    for var in &step.session.spec.env {
        let Some(from) = &var.value_from else { continue };
        let value = match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(r), _) => secret_value(step, &mut secrets, &r.name, &r.key).await?,
            (None, Some(r)) => map_value(step, &mut maps, &r.name, &r.key).await?,
            (None, None) => continue,
        };
        match value {
            Ok(value) => resolved.env.push((var.name.clone(), value)),
            Err(problem) => return Ok(Err(problem)),
        }
    }
    for input in &step.session.spec.workload.inputs {
        if let Err(problem) = resolve_input(step, input, lifetime, &mut resolved, &mut secrets, &mut maps).await? {
            return Ok(Err(problem));
        }
    }
    // Where outputs go must take them: a Job's results are not found missing after it ran.
    for output in &step.session.spec.workload.outputs {
        let store = match store_for(step, &output.s3.location).await? {
            Ok(store) => store,
            Err(problem) => return Ok(Err(problem)),
        };
        if let Err(error) = store.check().await {
            let mut problem = store_problem(&output.path, error);
            problem.message = format!("output {}", problem.message.trim_start_matches("input "));
            if problem.reason == "InputNotFound" {
                problem.reason = "OutputBucketNotFound";
            } else if problem.reason == "InputAccessDenied" {
                problem.reason = "OutputAccessDenied";
            }
            return Ok(Err(problem));
        }
    }
    Ok(Ok(resolved))
}

async fn secret_value(
    step: &Step<'_>,
    cache: &mut BTreeMap<String, Option<Secret>>,
    name: &str,
    key: &str,
) -> Result<std::result::Result<secrecy::SecretString, Problem>> {
    if !cache.contains_key(name) {
        cache.insert(name.to_string(), namespaced::<Secret>(step).get_opt(name).await?);
    }
    Ok(match cache[name].as_ref() {
        None => Err(Problem {
            reason: "SecretNotFound",
            message: format!("Secret {name:?} does not exist in this namespace"),
        }),
        Some(secret) => match secret.data.as_ref().and_then(|d| d.get(key)) {
            Some(bytes) => Ok(secrecy::SecretString::from(String::from_utf8_lossy(&bytes.0).into_owned())),
            None => {
                Err(Problem { reason: "SecretKeyNotFound", message: format!("Secret {name:?} has no key {key:?}") })
            }
        },
    })
}

async fn map_value(
    step: &Step<'_>,
    cache: &mut BTreeMap<String, Option<ConfigMap>>,
    name: &str,
    key: &str,
) -> Result<std::result::Result<secrecy::SecretString, Problem>> {
    if !cache.contains_key(name) {
        cache.insert(name.to_string(), namespaced::<ConfigMap>(step).get_opt(name).await?);
    }
    Ok(match cache[name].as_ref() {
        None => Err(Problem {
            reason: "ConfigMapNotFound",
            message: format!("ConfigMap {name:?} does not exist in this namespace"),
        }),
        Some(map) => match map.data.as_ref().and_then(|d| d.get(key)) {
            Some(value) => Ok(secrecy::SecretString::from(value.clone())),
            None => Err(Problem {
                reason: "ConfigMapKeyNotFound",
                message: format!("ConfigMap {name:?} has no key {key:?}"),
            }),
        },
    })
}

async fn resolve_input(
    step: &Step<'_>,
    input: &Input,
    lifetime: Duration,
    resolved: &mut Resolved,
    secrets: &mut BTreeMap<String, Option<Secret>>,
    maps: &mut BTreeMap<String, Option<ConfigMap>>,
) -> Result<std::result::Result<(), Problem>> {
    // Relative paths are under the working directory: every script runs from there.
    let path = input.path.clone();
    if let Some(source) = &input.config_map {
        if !maps.contains_key(&source.name) {
            maps.insert(source.name.clone(), namespaced::<ConfigMap>(step).get_opt(&source.name).await?);
        }
        let Some(map) = maps[&source.name].as_ref() else {
            let message =
                format!("input {:?}: ConfigMap {:?} does not exist in this namespace", input.path, source.name);
            return Ok(Err(Problem { reason: "ConfigMapNotFound", message }));
        };
        let mut entries: Vec<(String, Vec<u8>)> =
            map.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        entries.extend(map.binary_data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
        return Ok(place_keys(
            &path,
            source.key.as_deref(),
            entries,
            resolved,
            &format!("ConfigMap {:?}", source.name),
        ));
    }
    if let Some(source) = &input.secret {
        if !secrets.contains_key(&source.name) {
            secrets.insert(source.name.clone(), namespaced::<Secret>(step).get_opt(&source.name).await?);
        }
        let Some(secret) = secrets[&source.name].as_ref() else {
            let message = format!("input {:?}: Secret {:?} does not exist in this namespace", input.path, source.name);
            return Ok(Err(Problem { reason: "SecretNotFound", message }));
        };
        let entries = secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        return Ok(place_keys(&path, source.key.as_deref(), entries, resolved, &format!("Secret {:?}", source.name)));
    }
    if let Some(source) = &input.url {
        // The operator checks the address answers; the machine fetches it and checks the SHA-256.
        if let Some(problem) = check_url(&source.url).await {
            return Ok(Err(Problem { reason: "InputNotFound", message: format!("input {:?}: {problem}", input.path) }));
        }
        resolved.fetches.push(Fetch {
            url: source.url.clone(),
            path,
            bytes: None,
            sha256: source.sha256.clone(),
            md5: None,
        });
        return Ok(Ok(()));
    }
    if let Some(source) = &input.s3 {
        let store = match store_for(step, &source.location).await? {
            Ok(store) => store,
            Err(problem) => return Ok(Err(problem)),
        };
        let listed = match (&source.key, &source.prefix) {
            (Some(key), _) => store.head(key).await.map(|found| found.into_iter().collect::<Vec<_>>()),
            (None, Some(prefix)) => store.list(prefix).await,
            (None, None) => Ok(Vec::new()),
        };
        let listed = match listed {
            Ok(listed) if listed.is_empty() => {
                let what = source
                    .key
                    .clone()
                    .map(|k| format!("object {k:?}"))
                    .unwrap_or_else(|| format!("any object under {:?}", source.prefix.clone().unwrap_or_default()));
                let message = format!("input {:?}: no {what} in bucket {}", input.path, store.name());
                return Ok(Err(Problem { reason: "InputNotFound", message }));
            }
            Ok(listed) => listed,
            Err(error) => return Ok(Err(store_problem(&input.path, error))),
        };
        for object in listed {
            let target = match &source.prefix {
                Some(prefix) => format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    object.key.strip_prefix(prefix.as_str()).unwrap_or(&object.key).trim_start_matches('/')
                ),
                None => path.clone(),
            };
            // A single-part object's ETag is its MD5: the machine checks it.
            let md5 = object.etag.clone().filter(|e| e.len() == 32 && e.chars().all(|c| c.is_ascii_hexdigit()));
            resolved.fetches.push(Fetch {
                url: store.signed_get(&object.key, lifetime).to_string(),
                path: target,
                bytes: Some(object.bytes),
                sha256: None,
                md5,
            });
        }
    }
    Ok(Ok(()))
}

/// One key at `path`, or every key as a file under `path`.
fn place_keys(
    path: &str,
    key: Option<&str>,
    entries: Vec<(String, Vec<u8>)>,
    resolved: &mut Resolved,
    what: &str,
) -> std::result::Result<(), Problem> {
    match key {
        Some(key) => match entries.into_iter().find(|(k, _)| k == key) {
            Some((_, bytes)) => {
                resolved.files.push(InlineFile { path: path.to_string(), bytes });
                Ok(())
            }
            None => Err(Problem { reason: "InputNotFound", message: format!("{what} has no key {key:?}") }),
        },
        None => {
            for (name, bytes) in entries {
                resolved.files.push(InlineFile { path: format!("{}/{name}", path.trim_end_matches('/')), bytes });
            }
            Ok(())
        }
    }
}

fn store_problem(path: &str, error: StoreError) -> Problem {
    let reason = match &error {
        StoreError::Denied { .. } => "InputAccessDenied",
        StoreError::NotFound { .. } => "InputNotFound",
        StoreError::Unreachable { .. } => "InputUnreachable",
        StoreError::Invalid { .. } => "InputInvalid",
    };
    Problem { reason, message: format!("input {path:?}: {error}") }
}

/// The bucket of `location`, with the credentials of its Secret.
pub async fn store_for(step: &Step<'_>, location: &S3Location) -> Result<std::result::Result<Store, Problem>> {
    let name = &location.credentials_secret_ref.name;
    let Some(secret) = namespaced::<Secret>(step).get_opt(name).await? else {
        return Ok(Err(Problem {
            reason: "SecretNotFound",
            message: format!("the bucket credentials Secret {name:?} does not exist in this namespace"),
        }));
    };
    let field = |key: &str| {
        secret.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
    };
    let (Some(access_key), Some(secret_key)) = (field("AWS_ACCESS_KEY_ID"), field("AWS_SECRET_ACCESS_KEY")) else {
        return Ok(Err(Problem {
            reason: "SecretKeyNotFound",
            message: format!("Secret {name:?} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        }));
    };
    let keys = Keys { access_key, secret_key: secret_key.into(), session_token: field("AWS_SESSION_TOKEN") };
    let region = location.region.as_deref().unwrap_or("us-east-1");
    let virtual_hosted = location.virtual_hosted.unwrap_or(false);
    Ok(Store::new(&location.endpoint, &location.bucket, region, virtual_hosted, &keys)
        .map_err(|e| Problem { reason: "InputInvalid", message: e.to_string() }))
}

/// A URL input that plainly is not there (404/410): `Some(why)`. Anything else,
/// unreachable from here included, is left for the machine to try.
async fn check_url(url: &str) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok()?;
    let answer = client.head(url).send().await.ok()?;
    matches!(answer.status().as_u16(), 404 | 410).then(|| format!("{} answers {}", host_of(url), answer.status()))
}

/// The host of a URL, for messages (a URL's query may hold a token).
fn host_of(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_else(|| "the URL".into())
}

/// The env file's content: `export NAME='value'` lines.
pub fn env_file(env: &[(String, secrecy::SecretString)]) -> Vec<u8> {
    let mut text = String::new();
    for (name, value) in env {
        text.push_str(&format!("export {name}='{}'\n", value.expose_secret().replace('\'', r"'\''")));
    }
    text.into_bytes()
}

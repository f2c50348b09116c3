//! Which cluster this installation runs in: the `kube-system` namespace's UID,
//! which every cluster has and no two share. Folded into every instance label
//! (`Config::installation`), so two clusters installed the same way, sharing a
//! marketplace account, never sweep each other's machines.

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// Characters of the UID kept: 32 bits, so two clusters on one account collide
/// with odds of one in four billion, and labels stay short.
const SHORT_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot read the kube-system namespace to learn this cluster's id ({0}); grant `get` on namespaces/kube-system (the chart does) or set CLUSTER_ID"
    )]
    Unreadable(kube::Error),
    #[error("the kube-system namespace has no UID")]
    NoUid,
}

/// The short cluster id: `configured` when set, else the start of kube-system's UID.
pub async fn cluster_id(client: &Client, configured: Option<&str>) -> Result<String, IdentityError> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kube_system = namespaces.get("kube-system").await.map_err(IdentityError::Unreadable)?;
    let uid = kube_system.metadata.uid.ok_or(IdentityError::NoUid)?;
    short(&uid).ok_or(IdentityError::NoUid)
}

/// "3f9a0c12-..." -> "3f9a0c12": the UID's first hex digits, lower case.
fn short(uid: &str) -> Option<String> {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_lowercase()).collect();
    (hex.len() >= SHORT_LEN).then(|| hex[..SHORT_LEN].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_shortens_to_its_first_eight_hex_digits() {
        assert_eq!(short("3F9A0C12-77aa-4b1e-9d7e-0c5a2b1f7e11").as_deref(), Some("3f9a0c12"));
        assert_eq!(short("12-34"), None);
    }
}

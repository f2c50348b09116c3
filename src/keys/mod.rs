//! SSH key pairs for sessions: ed25519, in OpenSSH formats.

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use secrecy::{ExposeSecret, SecretString};

/// The fields of a session's key Secret (the `kubernetes.io/ssh-auth` type names the private one).
pub const SECRET_PRIVATE_KEY: &str = "ssh-privatekey";
pub const SECRET_PUBLIC_KEY: &str = "ssh-publickey";

/// A fresh key pair. The private half is only ever handed around as a secret.
pub struct KeyPair {
    /// OpenSSH private key ("-----BEGIN OPENSSH PRIVATE KEY-----").
    pub private_openssh: SecretString,
    /// One `authorized_keys` line: "ssh-ed25519 AAAA... comment".
    pub public_openssh: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("public_openssh", &self.public_openssh).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate an ed25519 key: {0}")]
    Generate(String),
    #[error("not an OpenSSH key ({0})")]
    Parse(String),
}

/// A random ed25519 private key. Seeded from the OS generator through `rand`
/// (ssh-key's own `random` wants a newer rand_core than the rest of the tree).
pub fn random_ed25519() -> Result<PrivateKey, std::convert::Infallible> {
    let seed: [u8; 32] = rand::random();
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// Generates an ed25519 key pair with `comment` on the public key.
pub fn generate(comment: &str) -> Result<KeyPair, KeyError> {
    let mut key = crate::keys::random_ed25519().map_err(|e| KeyError::Generate(e.to_string()))?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?;
    let public = key.public_key().to_openssh().map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(KeyPair { private_openssh: SecretString::from(private.to_string()), public_openssh: public })
}

pub fn parse_private(openssh: &SecretString) -> Result<PrivateKey, KeyError> {
    // The parse error never includes key material.
    PrivateKey::from_openssh(openssh.expose_secret()).map_err(|e| KeyError::Parse(e.to_string()))
}

pub fn parse_public(openssh: &str) -> Result<PublicKey, KeyError> {
    PublicKey::from_openssh(openssh.trim()).map_err(|e| KeyError::Parse(e.to_string()))
}

/// "SHA256:..." as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_parse_back_and_match() {
        let pair = generate("gpu-shopper test").unwrap();
        assert!(pair.public_openssh.starts_with("ssh-ed25519 "));
        assert!(pair.public_openssh.ends_with("gpu-shopper test"));
        let private = parse_private(&pair.private_openssh).unwrap();
        let public = parse_public(&pair.public_openssh).unwrap();
        assert_eq!(private.public_key().key_data(), public.key_data());
        assert!(fingerprint(&public).starts_with("SHA256:"));
        assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
    }
}

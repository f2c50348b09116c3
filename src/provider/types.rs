//! What every marketplace is translated into: offers, instances, and the
//! label that ties an instance to its session and this deployment.

use std::fmt;

use crate::crd::ProviderName;

/// One rentable machine configuration on one marketplace.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub provider: ProviderName,
    /// The marketplace's id for renting this offer (Vast ask id, TensorDock location+GPU, RunPod GPU type+cloud).
    pub id: String,
    /// GPU model normalised across marketplaces, for example "RTX 4090" or "A100 80GB".
    pub gpu_model: String,
    pub gpu_count: u32,
    /// Memory per GPU, GiB.
    pub vram_gb: u32,
    /// CUDA version the host advertises ("12.4"); the truth is only known on the box.
    pub cuda_version: Option<String>,
    pub driver_version: Option<String>,
    /// Whole machine, USD per hour.
    pub price_per_hour: f64,
    /// 0..1, when the marketplace reports it.
    pub reliability: Option<f64>,
    /// Human-readable location ("Texas, US").
    pub location: Option<String>,
    /// ISO 3166-1 alpha-2, when known.
    pub country: Option<String>,
    pub download_mbps: Option<f64>,
    pub upload_mbps: Option<f64>,
    pub interruptible: bool,
    /// What an interruptible rent bids, per hour, where the marketplace's bid is not
    /// the price (Vast bids `min_bid` for the machine; the price adds its storage).
    pub bid_per_hour: Option<f64>,
    /// The marketplace's host/machine id, for remembering bad hosts.
    pub host_id: Option<String>,
}

/// What to run on a new instance.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateRequest {
    pub offer: Offer,
    pub label: InstanceLabel,
    pub ssh_public_key: String,
    pub image: String,
    pub start_script: Option<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<u16>,
    pub disk_gb: u32,
    /// The session's CUDA minimum, for marketplaces that can place by it (RunPod).
    pub min_cuda_version: Option<String>,
}

/// An instance's life as the marketplace reports it, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Created, image loading or booting.
    Provisioning,
    Running,
    /// Stopped or exited; still exists (and may still bill for storage).
    Stopped,
    /// The marketplace reports it destroyed or terminated.
    Destroyed,
    /// A state this client does not know, kept verbatim for status messages.
    Unknown(String),
}

/// Where to SSH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// Where a private port of the instance is reached from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEndpoint {
    pub private_port: u16,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub provider: ProviderName,
    pub id: String,
    /// The label it was created with, when it parses as ours.
    pub label: Option<InstanceLabel>,
    pub state: InstanceState,
    pub ssh: Option<SshTarget>,
    pub public_ip: Option<String>,
    pub price_per_hour: Option<f64>,
    pub gpu_model: Option<String>,
    /// Exposed ports other than SSH, once the marketplace reports them.
    pub endpoints: Vec<PortEndpoint>,
    /// Every port is open as itself on `public_ip` (a dedicated IP), whether or
    /// not the marketplace lists it among `endpoints`.
    pub ports_open_on_public_ip: bool,
}

impl Instance {
    /// Where `private_port` is reached, if exposed: a listed mapping, else the
    /// port itself on a dedicated public IP.
    pub fn endpoint(&self, private_port: u16) -> Option<PortEndpoint> {
        self.endpoints.iter().find(|e| e.private_port == private_port).cloned().or_else(|| {
            let host = self.public_ip.clone().filter(|_| self.ports_open_on_public_ip)?;
            Some(PortEndpoint { private_port, host, port: private_port })
        })
    }
}

/// The name every instance is created with: `gpushopper.<installation>.<session-uid>`,
/// where the installation is the deployment id and the cluster's short id
/// (`prod-eu-1-3f9a0c12`; labels made before the cluster id was folded in carry
/// the deployment id alone). Neither part can contain '.', so one installation's
/// label is never a prefix match of another's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstanceLabel {
    pub installation: String,
    pub session_uid: String,
    /// `namespace_tag` of the session's namespace, on labels made since namespaces were
    /// folded in: the sweeper destroys an orphan only when it can tell its namespace is
    /// watched (a namespace taken out of the watch keeps its machines).
    pub namespace_tag: Option<String>,
}

const LABEL_PREFIX: &str = "gpushopper";

/// Length of a namespace tag: 32 bits of hash, in hex.
const TAG_LEN: usize = 8;

/// A short, stable tag for a namespace: FNV-1a (32 bits), in hex. Stable across
/// releases and platforms (it outlives the process in every label); short because
/// the marketplaces' limits on a name's length are not published. Two namespaces
/// that share a tag are told apart by nothing worse than today's behaviour.
pub fn namespace_tag(namespace: &str) -> String {
    let hash = namespace.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    format!("{hash:08x}")
}

impl InstanceLabel {
    pub fn new(installation: &str, session_uid: &str) -> Self {
        InstanceLabel {
            installation: installation.to_string(),
            session_uid: session_uid.to_string(),
            namespace_tag: None,
        }
    }

    /// The label of a session in `namespace`.
    pub fn for_session(installation: &str, session_uid: &str, namespace: &str) -> Self {
        InstanceLabel { namespace_tag: Some(namespace_tag(namespace)), ..Self::new(installation, session_uid) }
    }

    /// Parses a label; anything not made by `Display` gives `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let (prefix, deployment, uid) = (parts.next()?, parts.next()?, parts.next()?);
        let tag = parts.next();
        let tag_ok =
            tag.is_none_or(|t| t.len() == TAG_LEN && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if prefix != LABEL_PREFIX || deployment.is_empty() || uid.is_empty() || !tag_ok || parts.next().is_some() {
            return None;
        }
        Some(InstanceLabel { namespace_tag: tag.map(str::to_string), ..Self::new(deployment, uid) })
    }
}

impl fmt::Display for InstanceLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LABEL_PREFIX}.{}.{}", self.installation, self.session_uid)?;
        match &self.namespace_tag {
            Some(tag) => write!(f, ".{tag}"),
            None => Ok(()),
        }
    }
}

/// The GPU model as shown across marketplaces: vendor words, form factor and
/// memory size dropped ("NVIDIA GeForce RTX 4090 PCIe 24GB" -> "RTX 4090",
/// "A100 SXM4 80GB" -> "A100"); memory is `vram_gb`'s job.
pub fn display_gpu_model(name: &str) -> String {
    let kept: Vec<String> = name
        .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|t| !t.is_empty())
        .filter(|t| {
            let lower = t.to_ascii_lowercase();
            let is_memory = lower.ends_with("gb") && lower[..lower.len() - 2].chars().all(|c| c.is_ascii_digit());
            !(is_memory
                || ["nvidia", "geforce", "tesla", "pcie", "nvl", "sxm"].contains(&lower.as_str())
                || lower.starts_with("sxm")
                || lower.starts_with("hbm"))
        })
        .map(|t| t.to_ascii_uppercase())
        .collect();
    if kept.is_empty() { name.trim().to_string() } else { kept.join(" ") }
}

const VENDOR_WORDS: [&str; 3] = ["nvidia", "geforce", "tesla"];

/// Normalises a GPU model name for comparison: case, spaces, dashes and
/// vendor words do not matter ("NVIDIA GeForce RTX 4090" == "rtx-4090").
pub fn gpu_model_key(name: &str) -> String {
    let mut key: String = name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    for vendor in VENDOR_WORDS {
        if key.contains(vendor) {
            key = key.replace(vendor, "");
        }
    }
    key
}

/// Calls `f` with `gpu_model_key(name)`, built on the stack for any name up to 64
/// letters and digits: this runs for every offer of every search, and an allocation
/// per offer was most of the time ranking a large market took.
pub fn with_gpu_model_key<R>(name: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut key = [0u8; 64];
    let mut len = 0;
    for byte in name.bytes().filter(u8::is_ascii_alphanumeric) {
        let Some(slot) = key.get_mut(len) else { return f(&gpu_model_key(name)) };
        *slot = byte.to_ascii_lowercase();
        len += 1;
    }
    for vendor in VENDOR_WORDS {
        len = remove_every(&mut key, len, vendor.as_bytes());
    }
    // Only ASCII letters and digits were kept.
    f(std::str::from_utf8(&key[..len]).unwrap_or_default())
}

/// `String::replace(word, "")` in place on `text[..len]`: one left-to-right pass over the
/// original, each match skipped. Returns the new length.
fn remove_every(text: &mut [u8], len: usize, word: &[u8]) -> usize {
    let (mut read, mut write) = (0, 0);
    while read < len {
        if text[read..len].starts_with(word) {
            read += word.len();
        } else {
            text[write] = text[read];
            write += 1;
            read += 1;
        }
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The stack-built key is the key, for any name: vendor words split, doubled or
        /// nested ("nvnvidiaidia"), non-ASCII, and names too long for the stack buffer.
        #[test]
        fn the_key_built_on_the_stack_is_the_same_key(name in "(nvidia|NVIDIA |GeForce|tesla|nv|idia|gefor|[ -~]|é|🚀){0,70}") {
            prop_assert_eq!(with_gpu_model_key(&name, str::to_string), gpu_model_key(&name));
        }
    }

    #[test]
    fn label_round_trips_and_rejects_other_deployments_shapes() {
        let label = InstanceLabel::new("prod", "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(InstanceLabel::parse(&label.to_string()), Some(label));
        for foreign in [
            "",
            "gpushopper",
            "gpushopper..uid",
            "other.prod.uid",
            "gpushopper.prod.uid.extra",
            "gpushopper.prod.uid.0123456g",
            "my-training-box",
        ] {
            assert_eq!(InstanceLabel::parse(foreign), None, "{foreign}");
        }
        let tagged = InstanceLabel::for_session("prod", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "team-a");
        assert_eq!(InstanceLabel::parse(&tagged.to_string()), Some(tagged.clone()));
        assert_eq!(tagged.namespace_tag.as_deref(), Some(namespace_tag("team-a").as_str()));
        assert_ne!(namespace_tag("team-a"), namespace_tag("team-b"));
        // The tag is pinned: it lives on in labels across releases.
        assert_eq!(namespace_tag(""), "811c9dc5");
        assert_eq!(namespace_tag("a"), "e40c292c");
        // "prod" is a prefix of "prod-eu" as text, but not as a label.
        let eu = InstanceLabel::parse("gpushopper.prod-eu.uid").unwrap();
        assert_ne!(eu.installation, "prod");
    }

    #[test]
    fn gpu_models_display_the_same_across_marketplaces() {
        assert_eq!(display_gpu_model("NVIDIA GeForce RTX 4090 PCIe 24GB"), "RTX 4090");
        assert_eq!(display_gpu_model("RTX 4090"), "RTX 4090");
        assert_eq!(display_gpu_model("A100 SXM4 80GB"), "A100");
        assert_eq!(display_gpu_model("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(display_gpu_model("RTX A6000"), "RTX A6000");
        assert_eq!(display_gpu_model("geforcertx4090"), "GEFORCERTX4090");
    }

    #[test]
    fn gpu_model_names_compare_across_marketplaces() {
        assert_eq!(gpu_model_key("NVIDIA GeForce RTX 4090"), gpu_model_key("RTX 4090"));
        assert_eq!(gpu_model_key("rtx-4090"), gpu_model_key("RTX_4090"));
        assert_ne!(gpu_model_key("RTX 4090"), gpu_model_key("RTX 4080"));
        assert_eq!(gpu_model_key("A100 80GB"), gpu_model_key("NVIDIA A100-80GB"));
    }
}

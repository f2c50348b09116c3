//! The simulated market: hosts per marketplace, with what they advertise and
//! what they really have. Loaded from YAML/JSON; a built-in default serves
//! the demo.

use serde::{Deserialize, Serialize};

use crate::crd::ProviderName;

/// The market file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Market {
    /// API keys the simulated marketplaces accept.
    #[serde(default)]
    pub keys: Keys,
    #[serde(default)]
    pub timings: Timings,
    #[serde(default)]
    pub inference: InferenceSettings,
    pub hosts: Vec<Host>,
}

/// How simulated model servers behave.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceSettings {
    /// Time from instance start until the model answers.
    pub load_ms: u64,
    /// CUDA version an image needs when `images` does not name it.
    pub default_requires_cuda: String,
    /// CUDA version each image needs (its build's toolkit), by image name.
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, String>,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings { load_ms: 500, default_requires_cuda: "11.8".into(), images: Default::default() }
    }
}

impl InferenceSettings {
    pub fn requires_cuda(&self, image: &str) -> &str {
        self.images.get(image).map(String::as_str).unwrap_or(&self.default_requires_cuda)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    pub vastai: String,
    pub tensordock: String,
    pub runpod: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            vastai: "sim-vastai-key".into(),
            tensordock: "sim-tensordock-token".into(),
            runpod: "sim-runpod-key".into(),
        }
    }
}

impl Keys {
    pub fn of(&self, provider: ProviderName) -> &str {
        match provider {
            ProviderName::Vastai => &self.vastai,
            ProviderName::Tensordock => &self.tensordock,
            ProviderName::Runpod => &self.runpod,
        }
    }
}

/// How long an instance spends in each state, in milliseconds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// From create until the image starts loading.
    pub created_ms: u64,
    /// From loading until running.
    pub loading_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings { created_ms: 200, loading_ms: 800 }
    }
}

/// One rentable host (for RunPod: one GPU type).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Host {
    pub provider: ProviderName,
    /// Offer id as the marketplace shows it (Vast ask id, TensorDock location id, RunPod GPU type id).
    pub id: String,
    pub gpu: String,
    #[serde(default = "one")]
    pub gpu_count: u32,
    pub vram_gb: u32,
    /// CUDA version the marketplace advertises.
    pub advertised_cuda: String,
    /// CUDA version `nvidia-smi` really reports; defaults to the advertised one.
    #[serde(default)]
    pub real_cuda: Option<String>,
    #[serde(default = "default_driver")]
    pub driver: String,
    /// Whole machine, USD per hour (RunPod: per GPU).
    pub price_per_hour: f64,
    #[serde(default)]
    pub min_bid_per_hour: Option<f64>,
    #[serde(default = "default_reliability")]
    pub reliability: f64,
    #[serde(default = "default_location")]
    pub location: String,
    #[serde(default = "default_speed")]
    pub download_mbps: f64,
    #[serde(default = "default_speed")]
    pub upload_mbps: f64,
    /// GPUs available at this host (TensorDock lists counts).
    #[serde(default = "default_available")]
    pub available: u32,
    /// Vast: storage price, USD per GB per month (`storage_cost`); priced into `dph_total` for
    /// the `allocated_storage` a search names.
    #[serde(default)]
    pub storage_per_gb_month: f64,
    /// Vast: open ports on the host's router (`direct_port_count`).
    #[serde(default = "default_direct_ports")]
    pub direct_ports: u32,
    /// Vast: the memory the card reports, MB, when not the usual GB x 1024 - GB/2
    /// (an L40S reports 46068 MB for 48 GB: dstackai/gpuhunt's test table).
    #[serde(default)]
    pub reported_vram_mb: Option<u32>,
}

fn one() -> u32 {
    1
}
fn default_driver() -> String {
    "550.54.15".into()
}
fn default_reliability() -> f64 {
    0.98
}
fn default_location() -> String {
    "Texas, US".into()
}
fn default_speed() -> f64 {
    500.0
}
fn default_available() -> u32 {
    8
}
fn default_direct_ports() -> u32 {
    100
}

impl Host {
    pub fn real_cuda(&self) -> &str {
        self.real_cuda.as_deref().unwrap_or(&self.advertised_cuda)
    }

    /// ISO country code from "City, CC".
    pub fn country(&self) -> String {
        self.location.rsplit(',').next().unwrap_or("").trim().to_string()
    }
}

/// The market the demo and `gpu-shopper simulate` use when no file is given.
pub const DEFAULT_MARKET: &str = include_str!("default-market.yaml");

impl Market {
    pub fn from_text(text: &str) -> Result<Self, serde_saphyr::Error> {
        serde_saphyr::from_str(text)
    }

    pub fn builtin() -> Self {
        Self::from_text(DEFAULT_MARKET).expect("the built-in market parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_market_has_every_marketplace_and_a_lying_host() {
        let market = Market::builtin();
        for provider in ProviderName::ALL {
            assert!(market.hosts.iter().any(|h| h.provider == provider), "{provider}");
        }
        assert!(market.hosts.iter().any(|h| h.real_cuda() != h.advertised_cuda));
    }
}

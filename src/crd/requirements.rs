//! Constraints on marketplace offers, shared by `GpuOfferFilter` and the
//! inline requirements of a `GpuSession`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A marketplace the operator can rent from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    /// Vast.ai (REST API).
    Vastai,
    /// TensorDock (REST API v2).
    Tensordock,
    /// RunPod (GraphQL API).
    Runpod,
}

impl ProviderName {
    pub const ALL: [ProviderName; 3] = [Self::Vastai, Self::Tensordock, Self::Runpod];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vastai => "vastai",
            Self::Tensordock => "tensordock",
            Self::Runpod => "runpod",
        }
    }
}

impl std::fmt::Display for ProviderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which billing model an offer may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum Billing {
    /// Only on-demand offers: the machine is yours until you release it.
    #[default]
    OnDemand,
    /// Only interruptible (spot/bid) offers: cheaper, but the provider may take the machine back.
    Interruptible,
    /// Either kind of offer.
    Any,
}

/// Constraints an offer must satisfy. Every field is optional; an unset field does not constrain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfferRequirements {
    /// GPU models to accept, as marketplaces name them across providers (for example "RTX 4090", "A100 80GB", "H100"). Matching ignores case, spaces and dashes. Empty accepts any model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub gpu_models: Vec<String>,

    /// Exact number of GPUs on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub gpu_count: Option<u32>,

    /// Minimum memory per GPU, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_vram_gb: Option<u32>,

    /// Minimum CUDA version the host must really provide, as "MAJOR.MINOR" (for example "12.4"). Checked against the advertised version when shopping, and against `nvidia-smi` on the machine before it is handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,2}\.[0-9]{1,2}$"))]
    pub min_cuda_version: Option<String>,

    /// Highest acceptable price for the whole machine, in US dollars per hour. Must be greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1000.0").message("maxPricePerHour must be greater than 0 and at most 1000"))]
    pub max_price_per_hour: Option<f64>,

    /// Marketplaces to shop on. Empty allows every configured marketplace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderName>,

    /// Countries whose hosts are refused, as ISO 3166-1 alpha-2 codes (for example "CN").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 250), inner(regex(pattern = r"^[A-Z]{2}$")))]
    pub excluded_countries: Vec<String>,

    /// Regions whose hosts are refused: an offer whose location contains one of these strings (ignoring case, for example "Texas" or "Europe") is skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub excluded_regions: Vec<String>,

    /// Minimum host reliability as reported by the marketplace, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_reliability: Option<f64>,

    /// Minimum download bandwidth of the host, in Mb/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub min_download_mbps: Option<f64>,

    /// Minimum upload bandwidth of the host, in Mb/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub min_upload_mbps: Option<f64>,

    /// Which billing model to accept: OnDemand (default), Interruptible, or Any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<Billing>,
}

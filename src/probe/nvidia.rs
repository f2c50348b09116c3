//! What `nvidia-smi` on a machine really reports: the GPUs, the driver and the
//! CUDA version the driver provides (the marketplace's claim is checked against it).

use crate::crd::session::VerifiedMachine;

/// One login's command: the per-GPU query, then the banner that names the CUDA version.
pub const QUERY: &str =
    "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits && nvidia-smi";

/// What `nvidia-smi` says: (name, vram MiB, driver) per GPU, and the CUDA version.
pub fn parse(stdout: &str) -> Option<VerifiedMachine> {
    let gpus: Vec<(String, u64, String)> = stdout
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            (fields.len() >= 3)
                .then(|| Some((fields[0].to_string(), fields[1].parse().ok()?, fields[2].to_string())))?
        })
        .collect();
    let cuda = stdout.split("CUDA Version:").nth(1)?.split_whitespace().next()?.trim_end_matches('|').to_string();
    let (name, vram_mib, driver) = gpus.first()?.clone();
    Some(VerifiedMachine {
        gpu_name: name,
        gpu_count: gpus.len() as u32,
        vram_mib,
        driver_version: driver,
        cuda_version: cuda,
    })
}

/// One line for people: "1x NVIDIA RTX 4090 (24576 MiB), driver 550.54.15, CUDA 12.8".
pub fn summary(found: &VerifiedMachine) -> String {
    format!(
        "{}x {} ({} MiB), driver {}, CUDA {}",
        found.gpu_count, found.gpu_name, found.vram_mib, found.driver_version, found.cuda_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nvidia_smi_query_and_banner() {
        let out = "NVIDIA RTX 4090, 24576, 550.54.15, 0\n+---+\n| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.8     |\n";
        let found = parse(out).unwrap();
        assert_eq!(
            (found.gpu_name.as_str(), found.vram_mib, found.cuda_version.as_str()),
            ("NVIDIA RTX 4090", 24576, "12.8")
        );
        assert_eq!(found.gpu_count, 1);
        assert_eq!(summary(&found), "1x NVIDIA RTX 4090 (24576 MiB), driver 550.54.15, CUDA 12.8");
        assert!(parse("bash: nvidia-smi: command not found").is_none());
    }
}

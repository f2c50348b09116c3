//! The checked-in CRD YAML must be exactly what the Rust types generate.

#[test]
fn checked_in_crds_match_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/gpushopper.dev.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/gpushopper.dev.yaml exists");
    let generated = gpu_shopper::crd::crds_yaml();
    assert!(
        checked_in == generated,
        "crds/gpushopper.dev.yaml differs from the Rust types in src/crd/. Regenerate it with:\n  cargo run -- crds > crds/gpushopper.dev.yaml"
    );
}

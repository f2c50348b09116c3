//! docs/configuration.md lists every operator setting with its variable, flag
//! and default, generated from the same arguments `controller --help` prints.
//! Out of date, this test fails; `GPU_SHOPPER_BLESS=1 cargo test --test
//! configuration_doc` rewrites it.

#[test]
fn the_configuration_doc_is_what_the_controller_reads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let expected = gpu_shopper::config::markdown();
    if std::env::var_os("GPU_SHOPPER_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == expected,
        "docs/configuration.md is out of date: run `GPU_SHOPPER_BLESS=1 cargo test --test configuration_doc`"
    );
}

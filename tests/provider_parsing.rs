//! The clients' parsers on recorded real-shaped JSON (with missing, renamed
//! and retyped fields), and a property test that no JSON makes them panic.

use proptest::prelude::*;
use serde_json::Value;

use gpu_shopper::crd::{Billing, ProviderName};
use gpu_shopper::provider::{InstanceLabel, InstanceState, ProviderError, runpod, tensordock, vastai};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/providers/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn vast_offers_accept_strings_for_numbers_and_skip_unrentable_shapes() {
    let body = fixture("vastai-bundles.json");
    let offers: Vec<_> =
        body["offers"].as_array().unwrap().iter().filter_map(|o| vastai::parse_offer(o, false)).collect();
    assert_eq!(offers.len(), 2, "no price, no GPU name and zero GPUs are skipped: {offers:?}");
    let first = &offers[0];
    assert_eq!((first.id.as_str(), first.gpu_model.as_str(), first.vram_gb), ("7812345", "RTX 4090", 24));
    assert_eq!(first.cuda_version.as_deref(), Some("12.9"));
    assert_eq!(first.country.as_deref(), Some("CA"));
    assert_eq!(first.reliability, Some(0.9971));
    let second = &offers[1];
    assert_eq!((second.gpu_count, second.price_per_hour), (2, 0.41));
    assert_eq!(second.reliability, Some(0.95), "falls back to `reliability`");
    assert_eq!(second.country, None, "'Norway' is not a code");
}

#[test]
fn vast_instance_is_unwrapped_and_reads_cur_state_and_the_proxy() {
    let body = fixture("vastai-instance.json");
    let instance = vastai::parse_instance(&body["instances"]).unwrap();
    assert_eq!(instance.state, InstanceState::Provisioning, "actual_status null wins over cur_state: not running yet");
    let ssh = instance.ssh.unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port, ssh.user.as_str()), ("ssh5.vast.ai", 30542, "root"));
    assert_eq!(instance.public_ip.as_deref(), Some("203.0.113.17"));
    assert_eq!(instance.label, Some(InstanceLabel::new("prod", "5a1f0c2e-77aa-4b1c-9d55-0c1ed3f1aa10")));

    let list = fixture("vastai-instances.json");
    let parsed: Vec<_> = list["instances"].as_array().unwrap().iter().filter_map(vastai::parse_instance).collect();
    assert_eq!(parsed.len(), 3, "the entry without an id is skipped");
    let direct = parsed[0].ssh.as_ref().unwrap();
    assert_eq!((direct.host.as_str(), direct.port), ("203.0.113.17", 41022), "direct port when there is no proxy");
    assert_eq!(parsed[1].label, None, "foreign labels are not ours");
    assert_eq!(parsed[1].state, InstanceState::Stopped);
}

#[test]
fn tensordock_locations_become_offers_without_untrusted_port_forwards() {
    let offers = tensordock::parse_locations(&fixture("tensordock-locations.json"), 1, 100).unwrap();
    let ids: Vec<_> = offers.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "1a9b5c3e-0d3c-4a4f-9e5f-3c3a6a3f8f01/geforcertx4090-pcie-24gb",
            "1a9b5c3e-0d3c-4a4f-9e5f-3c3a6a3f8f01/a100-pcie-80gb"
        ],
        "no dedicated IP and no v0Name are skipped"
    );
    assert_eq!((offers[0].vram_gb, offers[0].country.as_deref()), (24, Some("US")));
    assert_eq!(offers[0].location.as_deref(), Some("Chicago, Illinois, US"));
    assert_eq!(offers[1].price_per_hour, 1.45);
    assert!(offers.iter().all(|o| o.cuda_version.is_none()), "TensorDock does not advertise CUDA");
    let two = tensordock::parse_locations(&fixture("tensordock-locations.json"), 2, 100).unwrap();
    assert_eq!(two.len(), 1, "only the 4090 location has 2 GPUs free");
    assert!((two[0].price_per_hour - 0.74).abs() < 1e-9);

    let instance = tensordock::parse_instance(&fixture("tensordock-instance.json")).unwrap();
    let ssh = instance.ssh.unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port, ssh.user.as_str()), ("198.51.100.23", 20022, "user"));
    assert_eq!(instance.state, InstanceState::Running);
}

#[test]
fn runpod_gpu_types_pods_and_errors_inside_200() {
    let data = &fixture("runpod-gputypes.json")["data"];
    let any = runpod::parse_gpu_types(data, 1, Billing::Any).unwrap();
    assert_eq!(any.len(), 3, "4090 on demand + spot, A100 on demand; H100 out of stock, H200 no price: {any:?}");
    assert!(any.iter().all(|o| !o.id.contains("H100")), "no stockStatus: nothing to rent");
    let on_demand = runpod::parse_gpu_types(data, 2, Billing::OnDemand).unwrap();
    assert_eq!(on_demand[0].price_per_hour, 0.88, "priced per GPU");
    assert!(on_demand.iter().all(|o| !o.interruptible));

    let pod = runpod::parse_pod(&fixture("runpod-pod.json")["data"]["pod"]).unwrap();
    let ssh = pod.ssh.unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port), ("194.68.245.12", 22081), "the public mapping of port 22");
    assert_eq!(pod.state, InstanceState::Running);

    let errors = fixture("runpod-errors.json");
    let message = errors["errors"][0]["message"].as_str().unwrap();
    assert!(matches!(
        runpod::classify_error(message),
        ProviderError::NoCapacity { provider: ProviderName::Runpod, .. }
    ));
}

#[test]
fn runpod_ssh_is_the_public_tcp_mapping_and_http_ports_are_not_endpoints() {
    let pod = runpod::parse_pod(&fixture("runpod-pod-udp-first.json")["data"]["pod"]).unwrap();
    let ssh = pod.ssh.clone().unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port), ("69.30.85.41", 22118), "not the UDP mapping listed first");
    assert_eq!(pod.endpoint(8000), None, "a /http port has only a private address");
    let tcp = pod.endpoint(8001).unwrap();
    assert_eq!((tcp.host.as_str(), tcp.port), ("69.30.85.41", 22119));
}

#[test]
fn runpod_capacity_errors_move_on_and_request_errors_do_not() {
    for message in [
        "There are no longer any instances available with the requested specifications. Please refresh and try again.",
        "SUPPLY_CONSTRAINT: Unable to find a machine with capacity for this pod.",
        "Unable to find a machine with capacity",
    ] {
        assert!(matches!(runpod::classify_error(message), ProviderError::NoCapacity { .. }), "{message}");
    }
    assert!(matches!(runpod::classify_error("Pod not found"), ProviderError::Rejected { .. }));
}

#[test]
fn tensordock_v2_locations_price_every_resource_and_name_countries() {
    let offers = tensordock::parse_locations(&fixture("tensordock-locations-v2.json"), 1, 100).unwrap();
    assert_eq!(offers.len(), 2);
    let chicago = &offers[0];
    assert_eq!(chicago.country.as_deref(), Some("US"), "'United States' is a country name");
    // GPU 0.20 + 4 vCPU x 0.003 + 16 GB x 0.002 + 100 GB x 0.00005
    assert!((chicago.price_per_hour - (0.2 + 0.012 + 0.032 + 0.005)).abs() < 1e-9, "{}", chicago.price_per_hour);
    assert_eq!(chicago.host_id, None, "a location is not one machine to avoid");
    assert_eq!(offers[1].country.as_deref(), Some("DE"));
    let bigger_disk = tensordock::parse_locations(&fixture("tensordock-locations-v2.json"), 1, 500).unwrap();
    assert!(bigger_disk[0].price_per_hour > chicago.price_per_hour, "storage is priced");
}

#[test]
fn tensordock_documented_listing_is_read() {
    let body = fixture("tensordock-instances-documented.json");
    let items = tensordock::listed_instances(&body).expect("the documented shape is a listing");
    let parsed: Vec<_> = items.iter().filter_map(tensordock::parse_instance).collect();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].id, "550e8400-e29b-41d4-a716-446655440000");
    assert_eq!(parsed[0].label, Some(InstanceLabel::new("prod", "uid-7")));
    assert_eq!(parsed[0].state, InstanceState::Running);
    assert_eq!(parsed[1].label, None);
    let old_shape = serde_json::json!({"data": [{"id": "x", "name": "n", "status": "running"}]});
    assert_eq!(tensordock::listed_instances(&old_shape).map(Vec::len), Some(1));
}

#[test]
fn vast_statuses_that_never_run_by_themselves_are_stopped() {
    let page = fixture("vastai-instances-v1-page.json");
    let parsed: Vec<_> = page["instances"].as_array().unwrap().iter().filter_map(vastai::parse_instance).collect();
    assert_eq!(parsed.len(), 3);
    assert!(parsed.iter().all(|i| i.state == InstanceState::Stopped), "frozen, offline, unknown: {parsed:?}");
}

#[test]
fn vast_search_asks_for_memory_with_gpuhuntss_margin_prices_the_disk_and_names_the_models() {
    use gpu_shopper::crd::OfferRequirements;
    use gpu_shopper::provider::OfferQuery;
    let query = OfferQuery {
        requirements: OfferRequirements {
            gpu_models: vec!["A100 80GB".into(), "H100 80GB".into()],
            min_vram_gb: Some(24),
            ..Default::default()
        },
        limit: 50,
        disk_gb: 60,
        public_ports: true,
    };
    let q = vastai::search_query(&query);
    // 80 x 1024 x 0.93: dstackai/gpuhunt's bound, below which no 80 GB card reports.
    assert_eq!(q["gpu_ram"]["gte"], 76185.0, "the memory both names ask for");
    assert_eq!(q["allocated_storage"], 60, "priced with the disk the rent asks for (vast-cli)");
    assert_eq!(q["direct_port_count"]["gte"], 1, "public ports need a host with direct ports (dstack)");
    let names: Vec<&str> = q["gpu_name"]["in"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    for expected in ["A100 PCIE", "A100 SXM4", "H100 SXM", "H100 PCIE", "H100 NVL"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert!(!names.contains(&"A100X"), "another model");
    let plain = vastai::search_query(&OfferQuery {
        requirements: OfferRequirements { min_vram_gb: Some(48), ..Default::default() },
        limit: 50,
        ..Default::default()
    });
    let bound = plain["gpu_ram"]["gte"].as_f64().unwrap();
    assert!(bound <= 46068.0, "an L40S reports 46068 MB for 48 GB (gpuhunt's table) and must be found: {bound}");
    assert!(plain.get("gpu_name").is_none());
    assert!(plain.get("direct_port_count").is_none(), "no public port asked for");
}

#[test]
fn a_vast_card_that_reports_under_its_name_is_offered_at_its_name() {
    let offer = vastai::parse_offer(
        &serde_json::json!({"id": 1, "num_gpus": 1, "dph_total": 0.9, "gpu_name": "L40S", "gpu_ram": 46068}),
        false,
    )
    .unwrap();
    assert_eq!(offer.vram_gb, 48);
}

#[test]
fn a_vast_spot_offer_bids_its_minimum_bid() {
    let offer = vastai::parse_offer(
        &serde_json::json!({"id": 1, "num_gpus": 1, "dph_total": 0.21, "min_bid": 0.18, "gpu_name": "RTX 4090", "gpu_ram": 24564}),
        true,
    )
    .unwrap();
    assert_eq!(offer.bid_per_hour, Some(0.18), "dstack and SkyPilot bid min_bid");
    assert_eq!(offer.price_per_hour, 0.21, "the price includes the storage");
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        prop_oneof![Just("running".to_string()), Just("22/tcp".to_string()), ".{0,12}"].prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("id"),
        Just("offers"),
        Just("instances"),
        Just("data"),
        Just("locations"),
        Just("gpus"),
        Just("gpuTypes"),
        Just("lowestPrice"),
        Just("runtime"),
        Just("ports"),
        Just("22/tcp"),
        Just("HostPort"),
        Just("num_gpus"),
        Just("dph_total"),
        Just("gpu_name"),
        Just("v0Name"),
        Just("price_per_hr"),
        Just("count"),
        Just("privatePort"),
        Just("publicPort"),
        Just("ip"),
        Just("label"),
        Just("name"),
        Just("actual_status"),
        Just("portForwards"),
        Just("internal_port"),
        Just("external_port"),
        Just("attributes"),
        Just("ssh_host"),
        Just("ssh_port"),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_json_makes_a_parser_panic(value in arbitrary_json()) {
        let _ = vastai::parse_offer(&value, false);
        let _ = vastai::parse_instance(&value);
        let _ = tensordock::parse_locations(&value, 1, 100);
        let _ = tensordock::parse_instance(&value);
        let _ = runpod::parse_gpu_types(&value, 3, Billing::Any);
        let _ = runpod::parse_pod(&value);
        if let Some(text) = value.as_str() {
            let _ = runpod::classify_error(text);
        }
    }

    #[test]
    fn no_bytes_make_a_parser_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            let _ = vastai::parse_instance(&value);
            let _ = tensordock::parse_locations(&value, 1, 100);
            let _ = runpod::parse_pod(&value);
        }
        let _ = gpu_shopper::provider::error::excerpt(&bytes, &["secret"]);
    }
}

#[test]
fn a_live_tensordock_instance_reaches_ssh_through_its_forward_and_other_ports_on_its_dedicated_ip() {
    let instance = tensordock::parse_instance(&fixture("tensordock-instance-live.json")).unwrap();
    let ssh = instance.ssh.clone().unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port), ("174.94.145.71", 20456), "the forward says where 22 went");
    let model = instance.endpoint(8000).expect("a dedicated IP has every port open");
    assert_eq!((model.host.as_str(), model.port), ("174.94.145.71", 8000));
    assert_eq!(instance.price_per_hour, Some(0.272999));
}

#[test]
fn tensordock_states_the_docs_and_peers_name() {
    let with = |status: &str| {
        let mut v = fixture("tensordock-instance-live.json");
        v["status"] = serde_json::json!(status);
        tensordock::parse_instance(&v).unwrap().state
    };
    assert_eq!(with("StoppedDisassociated"), InstanceState::Stopped, "the docs' second stopped state");
    assert!(matches!(with("deleting"), InstanceState::Unknown(_)), "deleting is not gone: it may still bill");
    assert_eq!(with("deleted"), InstanceState::Destroyed);
}

#[test]
fn a_runpod_pod_from_the_docs_with_only_a_proxied_port_has_no_ssh_yet() {
    let pod = runpod::parse_pod(&fixture("runpod-pod-by-id.json")["data"]["pod"]).unwrap();
    assert!(pod.ssh.is_none() && pod.endpoints.is_empty(), "an /http port behind the proxy is not reachable: {pod:?}");
}

//! GpuOfferFilter status is a live view of the (simulated) market, against a
//! real API server, with the controller running as its own process.

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{GpuOfferFilter, ProviderName};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::world::Faults;
use gpu_shopper::simulator::{self, SimulatorHandle};
use support::*;

fn controller_env(sim: &SimulatorHandle) -> Vec<(&'static str, String)> {
    sim.env()
}

async fn observed(filters: &Api<GpuOfferFilter>, name: &str) -> GpuOfferFilter {
    wait_for("the filter's status for its generation", Duration::from_secs(30), || async {
        let f = filters.get(name).await.ok()?;
        (f.status.as_ref()?.observed_generation == f.metadata.generation).then_some(f)
    })
    .await
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_filter_shows_the_matching_market_and_names_a_marketplace_that_failed() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "market").await;
    let sim = simulator::start(Market::builtin(), 0).await.unwrap();
    let env = controller_env(&sim);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let controller = ControllerProcess::start_with_env(&ns, &env);
    controller.wait_ready().await;

    let filters: Api<GpuOfferFilter> = Api::namespaced(client.clone(), &ns);
    let filter: GpuOfferFilter = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuOfferFilter",
        "metadata": {"name": "cheap-4090"},
        "spec": {"gpuModels": ["RTX 4090"], "minVramGb": 24, "excludedCountries": ["CA"]},
    }))
    .unwrap();
    filters.create(&PostParams::default(), &filter).await.unwrap();
    let seen = observed(&filters, "cheap-4090").await;
    let status = seen.status.unwrap();
    // Built-in market 4090s: Vast 0.29 (CA, excluded), Vast 0.34, TensorDock 0.37, RunPod 0.44
    // (RunPod names no country: with countries excluded, it fails closed).
    assert_eq!(status.matching_offers, Some(2));
    assert_eq!(status.cheapest_price_per_hour, Some(0.34));
    assert_eq!(status.best_offers.len(), 2);
    assert_eq!(status.best_offers[0].provider, Some(ProviderName::Vastai));
    assert!(status.best_offers.iter().all(|o| o.gpu_model == "RTX 4090"), "{:?}", status.best_offers);
    assert!(status.last_refresh_time.is_some());
    let searched = find(&status.conditions, types::MARKET_SEARCHED).unwrap();
    assert_eq!((searched.status.as_str(), searched.reason.as_str()), ("True", "AllSearched"));

    // RunPod's key stops working; a spec change asks for a fresh look.
    sim.set_faults(ProviderName::Runpod, Faults { auth_failure: true, ..Default::default() });
    let patch = json!({"spec": {"maxPricePerHour": 0.40}});
    filters.patch("cheap-4090", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let seen = wait_for("the failed marketplace in the condition", Duration::from_secs(30), || async {
        let f = filters.get("cheap-4090").await.ok()?;
        let status = f.status.clone()?;
        (status.observed_generation == f.metadata.generation
            && find(&status.conditions, types::MARKET_SEARCHED)?.reason == "SomeProvidersFailed")
            .then_some(f)
    })
    .await;
    let status = seen.status.unwrap();
    assert_eq!(status.matching_offers, Some(2), "0.34 and 0.37 remain under $0.40");
    let searched = find(&status.conditions, types::MARKET_SEARCHED).unwrap();
    assert!(searched.message.contains("runpod: authentication failed"), "{}", searched.message);
    assert!(!searched.message.contains(&sim.sim.world().market.keys.runpod), "no key in the message");

    drop(controller);
    delete_namespace(&client, &ns).await;
}

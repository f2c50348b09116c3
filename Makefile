# gpu-shopper: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
CONTROL_PLANE := tests/control-plane

.PHONY: demo test setup lint unit integration control-plane stop-control-plane crds manifests image release soak bench

## demo: set up this machine and run the operator end to end against a local control plane
demo:
	e2e/demo.sh

## test: everything: formatting, clippy, unit tests, and the integration tests against a real API server
## (a control plane it starts is stopped afterwards; KEEP_CONTROL_PLANE=1 keeps it for the next run)
test: setup lint
	tests/run.sh

setup:
	scripts/setup.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## unit: the tests that need no cluster (integration tests are listed as ignored)
unit:
	cargo test --all-targets

control-plane:
	$(CONTROL_PLANE)/start.sh

stop-control-plane:
	$(CONTROL_PLANE)/stop.sh

## crds: regenerate crds/ (and the chart's and deploy/base's copies) from the Rust types
crds:
	cargo run --quiet -- crds > crds/gpushopper.dev.yaml
	cp crds/gpushopper.dev.yaml charts/gpu-shopper/files/crds.yaml
	cp crds/gpushopper.dev.yaml deploy/base/crds.yaml

## manifests: regenerate deploy/base from the chart's defaults
manifests: crds
	scripts/render-manifests.sh

## image: build the OCI image without a container engine and push it: make image IMAGE=registry.example.com/gpu-shopper:0.2.0
IMAGE ?= localhost:5000/gpu-shopper:dev
image:
	scripts/image.sh $(IMAGE)

## release: every artifact of VERSION into dist/VERSION (binary archive, OCI image layout, chart, krew manifest, notes, SHA256SUMS)
release:
	@test -n "$(VERSION)" || { echo "make release VERSION=x.y.z (the version Cargo.toml and Chart.yaml name)"; exit 1; }
	scripts/release.sh $(VERSION)

## soak: the long fault-injection soak (the short one runs in `make test`)
SOAK_SECONDS ?= 1800
SOAK_SEED ?= 7
soak: setup
	kubeconfig=$$($(CONTROL_PLANE)/start.sh) && \
	GPU_SHOPPER_TEST_KUBECONFIG=$$kubeconfig SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SEED=$(SOAK_SEED) SOAK_RESULTS_DIR=$(CURDIR)/bench/results \
	cargo test --release --test soak -- --include-ignored --nocapture

## bench: the scale benchmark (N = BENCH_SIZES, then BENCH_IDLE_SESSIONS idle ones) and the offer-ranking criterion bench
BENCH_SIZES ?= 100,500,1000
BENCH_IDLE_SESSIONS ?= 10000
BENCH_RATE_LIMITED_SESSIONS ?= 20
BENCH_OUTPUT_GIB ?= 1
bench: setup
	kubeconfig=$$($(CONTROL_PLANE)/start.sh) && \
	GPU_SHOPPER_TEST_KUBECONFIG=$$kubeconfig BENCH_SIZES=$(BENCH_SIZES) BENCH_IDLE_SESSIONS=$(BENCH_IDLE_SESSIONS) \
	BENCH_RATE_LIMITED_SESSIONS=$(BENCH_RATE_LIMITED_SESSIONS) BENCH_OUTPUT_GIB=$(BENCH_OUTPUT_GIB) cargo bench --bench scale
	cargo bench --bench ranking -- --warm-up-time 1 --measurement-time 5
	cargo bench --bench gateway

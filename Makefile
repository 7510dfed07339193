# sluice: the two commands are `make demo` and `make test`. Both install what is missing.

CARGO ?= cargo
# The binaries the e2e tests and the demo run (cargo puts them under CARGO_TARGET_DIR when set).
export SLUICE_BIN_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug

.PHONY: deps build test test-unit test-e2e demo bench fmt lint clean-labs

deps:
	@./scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# Every test, including the ones that need root, BPF and network namespaces. With CI=true a
# missing privilege fails the run instead of skipping.
test: build
	$(CARGO) test --workspace --exclude sluice-e2e
	$(CARGO) test -p sluice-e2e -- --test-threads=1

test-unit: build
	$(CARGO) test --workspace --exclude sluice-e2e

test-e2e: build
	$(CARGO) test -p sluice-e2e -- --test-threads=1 --nocapture

demo: build
	@./scripts/demo.sh

# sluice against kube-proxy's iptables/nftables modes, optimised build; results and plots in
# bench-results/ (BENCH_ARGS="--services 0,1000 --seconds 2" to change the run).
bench: deps
	$(CARGO) build --release --workspace --bins
	SLUICE_BIN_DIR=$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/sluice bench $(BENCH_ARGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets

# Removes every lab on this machine (e.g. after an interrupted demo).
clean-labs:
	$(SLUICE_BIN_DIR)/sluice lab down --all

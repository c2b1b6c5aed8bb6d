# doudi — the two commands of the README, and the steps behind them.
#   make demo   sets up what it needs and runs doudi on the sample feeds (embedded SQLite)
#   make test   sets up Kafka and PostgreSQL and runs every test
#   make unit   runs the tests that need no server (the library's, the binary's, the CLI's)
# Build output is kept outside the clone so that rebuilds on the same machine are fast.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/doudi/target
export PATH := $(HOME)/.cargo/bin:$(PATH)
DOUDI := $(CARGO_TARGET_DIR)/release/doudi
CARGO_TEST_FLAGS ?=

.PHONY: demo test setup build services lint unit bench chaos stop

setup:
	@scripts/setup

build: setup
	cargo build --release --locked
	@# target/release/doudi in the clone points at the binary in the shared target directory.
	@if [ "$$(realpath -m $(CARGO_TARGET_DIR))" != "$$(realpath -m target)" ]; then mkdir -p target/release && ln -sfn $(DOUDI) target/release/doudi; fi

services: setup
	@scripts/kafka start
	@scripts/kafka prune
	@scripts/postgres start >/dev/null

demo: build
	@scripts/kafka start
	@DOUDI=$(DOUDI) scripts/demo

lint:
	cargo fmt --check
	cargo clippy --release --locked --all-targets -- -D warnings

# The tests are a development deployment: the processes they start use the built-in development
# keys, which any other deployment refuses (keys.development).
test: build services lint
	DOUDI_KEYS_DEVELOPMENT=true DOUDI_TEST_DATABASE_URL=$$(scripts/postgres url) DOUDI_KAFKA_BOOTSTRAP_SERVERS=$$(scripts/kafka bootstrap) \
	  cargo test --release --locked --no-fail-fast $(CARGO_TEST_FLAGS) -- --test-threads=2
	scripts/chart-check

# The tests that need neither the broker nor PostgreSQL.
UNIT_TESTS := --lib --bins --test cli --test schemas --test ops_http --test metrics --test exit_codes

unit: setup
	DOUDI_KEYS_DEVELOPMENT=true cargo test --release --locked $(UNIT_TESTS) -- --test-threads=2

# A soak of load and random faults (network cuts, broker and PostgreSQL restarts, SIGKILLs) for
# CHAOS_SECONDS (default 600); prints what went in and out and the time to recover from each fault.
CHAOS_SECONDS ?= 600
chaos: build services
	CHAOS_SECONDS=$(CHAOS_SECONDS) DOUDI_KEYS_DEVELOPMENT=true DOUDI_TEST_DATABASE_URL=$$(scripts/postgres url) DOUDI_KAFKA_BOOTSTRAP_SERVERS=$$(scripts/kafka bootstrap) \
	  cargo test --release --locked --test faults chaos -- --ignored --nocapture

bench: build services
	scripts/bench

stop:
	-scripts/kafka stop
	-scripts/postgres stop

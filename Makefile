# ocix: make demo | make test | make bench | make fuzz | make check
SHELL := /bin/bash
CARGO ?= cargo
OCIX_CORPUS ?= $(HOME)/.cache/ocix-corpus
export OCIX_CORPUS
OCIX := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/ocix
export OCIX

.PHONY: all build release deps corpus test unit integration demo bench fuzz check fmt clippy clean

all: release

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Debian packages, pycddl; only what is missing.
deps:
	bash integration/deps.sh

# Every test: unit and tests/ (cargo), then the end-to-end tests that drive
# the real tools on the real corpus image (integration/). The corpus is
# built first, so the cargo tests on it run (and fail if it is absent).
test: deps release corpus
	OCIX_REQUIRE_CORPUS=1 OCIX_REQUIRE_PRIVILEGED=1 $(CARGO) test --release
	bash integration/run.sh

# The shared corpus image in $(OCIX_CORPUS), built once.
corpus: deps
	bash -c 'source integration/lib.sh && ensure_corpus'

unit:
	$(CARGO) test

integration: deps release
	bash integration/run.sh

# The main job on a built-in example tree.
demo: deps release
	bash integration/demo.sh

# Side-by-side timings against the tools ocix replaces, on the corpus.
bench: deps release
	bash integration/bench.sh

# Bounded fuzzing of the readers (FUZZ_SECONDS per target, default 30).
fuzz:
	bash integration/fuzz.sh

check: fmt clippy test

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean

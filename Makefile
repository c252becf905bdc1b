# clawker-fw build, install and test entry points. See README.md.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
PLUGIN ?= clawker-fw:latest
BUILD := build
PLUGIN_DIR := $(BUILD)/plugin
GOFLAGS_STATIC := CGO_ENABLED=0
# Version and commit stamped into the CLI and the plugin (`clawker-fw version`).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -s -w -X github.com/clawker-fw/clawker-fw/plugin/api.buildVersion=$(VERSION) -X github.com/clawker-fw/clawker-fw/plugin/api.buildCommit=$(COMMIT)
# Where `make install` puts the admin CLI.
BINDIR ?= /usr/local/bin
# Fuzz budgets are execution counts (about 10-20 s each on these machines), not
# durations: Go 1.26's fuzz coordinator can fail a run whose -fuzztime deadline
# fires while a worker is mid-call ("context deadline exceeded", no crasher;
# golang/go#75804, fixed in Go 1.27). FUZZTIME=30s (or 1000x) overrides all.
FUZZ_PARSE ?= 200000x
FUZZ_HOST ?= 100000x
FUZZ_PATH ?= 60000x
FUZZ_FORWARD ?= 100000x
FUZZ_DNS ?= 30000x
FUZZ_SNAPSHOT ?= 100000x
# Docker Engine of the e2e suite: debian (docker.io 20.10) or current (built by
# scripts/engine.sh from pinned module versions, cached). ENGINES: for test.
ENGINE ?= debian
ENGINES ?= debian current
# Go packages tested by test-unit (race detector on): everything but the e2e
# suite, including the benchmarks' own tests (bench/effective's smoke test
# needs root and the kernel's BPF, like bpf's and proxy/builtin's).
UNIT_PKGS = $$($(GO) list ./... | grep -v -e /e2e)

.PHONY: all deps generate build plugin install upgrade uninstall demo test test-unit test-fuzz test-e2e test-e2e-engines engine check-generate lint bench bench-bridge bench-effective clean

all: build

deps:
	./scripts/deps.sh

## generate: rebuild generated code (bpf2go objects)
generate:
	$(GO) generate ./bpf/...

## check-generate: fail when the committed generated files differ from a fresh generate
check-generate: generate
	git diff --exit-code -- bpf/ || { echo "generated BPF files differ from the committed ones: run make generate and commit" >&2; exit 1; }

build:
	mkdir -p $(BUILD)/bin
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BUILD)/bin/ ./cmd/...

## plugin: the managed-plugin directory (config.json + rootfs) in build/plugin
plugin: build
	rm -rf $(PLUGIN_DIR) && mkdir -p $(PLUGIN_DIR)/rootfs
	cp config.json $(PLUGIN_DIR)/
	cp -a rootfs/. $(PLUGIN_DIR)/rootfs/
	find $(PLUGIN_DIR)/rootfs -name .keep -delete
	install -m 0755 $(BUILD)/bin/clawker-fw-plugin $(BUILD)/bin/clawker-coredns $(PLUGIN_DIR)/rootfs/bin/
	# The admin CLI rides along, for hosts that install the plugin from a registry (README).
	install -m 0755 $(BUILD)/bin/clawker-fw $(PLUGIN_DIR)/rootfs/bin/
	install -m 0644 /etc/ssl/certs/ca-certificates.crt $(PLUGIN_DIR)/rootfs/etc/ssl/certs/ca-certificates.crt
	if [ -n "$(ENVOY)" ]; then install -m 0755 "$(ENVOY)" $(PLUGIN_DIR)/rootfs/bin/envoy; fi
	@echo "plugin: $(PLUGIN_DIR) ($$(du -sh $(PLUGIN_DIR) | cut -f1))"

## install: create and enable the plugin in the local Docker (idempotent; a
## reinstall keeps the settings made with `docker plugin set`; SETTINGS="K=V ..."
## adds or overrides some), and put the admin CLI in $(BINDIR)
install: plugin
	./scripts/install.sh $(PLUGIN_DIR) $(PLUGIN) $(SETTINGS)
	install -D -m 0755 $(BUILD)/bin/clawker-fw $(BINDIR)/clawker-fw
	@echo "install: admin CLI at $(BINDIR)/clawker-fw"

## upgrade: `docker plugin upgrade` of the installed plugin to REMOTE (a
## registry reference), keeping its settings (Docker drops the mount sources)
upgrade:
	@[ -n "$(REMOTE)" ] || { echo "usage: make upgrade REMOTE=registry/you/clawker-fw:TAG" >&2; exit 2; }
	./scripts/install.sh --upgrade $(REMOTE) $(PLUGIN) $(SETTINGS)

## uninstall: remove the plugin, its BPF programs, nftables tables and links,
## and say what is left (networks, state, CA key); PURGE=1 removes those too
uninstall:
	./scripts/install.sh --uninstall $(if $(filter 1 true yes,$(PURGE)),--purge) $(PLUGIN_DIR) $(PLUGIN)
	rm -f $(BINDIR)/clawker-fw

## demo: build, install and run the demo (README's first command)
demo:
	./scripts/demo.sh

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

test-unit:
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

test-fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseRules$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_PARSE)) ./policy
	$(GO) test -run='^$$' -fuzz='^FuzzNormalizeHost$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_HOST)) ./policy
	$(GO) test -run='^$$' -fuzz='^FuzzPathReadings$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_PATH)) ./policy
	$(GO) test -run='^$$' -fuzz='^FuzzForwardAsSent$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_FORWARD)) ./proxy/builtin
	$(GO) test -run='^$$' -fuzz='^FuzzServeDNS$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_DNS)) ./dns
	$(GO) test -run='^$$' -fuzz='^FuzzSnapshotHead$$' -fuzztime=$(or $(FUZZTIME),$(FUZZ_SNAPSHOT)) ./dns

## engine: build (or find cached) the current Docker Engine's dockerd and runc
engine:
	./scripts/engine.sh

# One e2e environment at a time on a machine (fixed netns, pin dir, nft tables): take the shared lock.
## test-e2e: the e2e suite on one engine (ENGINE=debian, the default, or ENGINE=current)
test-e2e: plugin build
	@set -o pipefail; bin=; \
	if [ "$(ENGINE)" = current ]; then bin=$$(./scripts/engine.sh) || exit 1; \
	elif [ "$(ENGINE)" != debian ]; then echo "ENGINE=$(ENGINE): want debian or current" >&2; exit 2; fi; \
	flock -o /tmp/clawker-e2e.lock env CLAWKER_E2E=1 CLAWKER_E2E_ENGINE=$(ENGINE) CLAWKER_E2E_ENGINE_BIN=$$bin \
		$(GO) test -count=1 -timeout 60m -v ./e2e/... 2>&1 | tee $(BUILD)/e2e-$(ENGINE).log

## test-e2e-engines: the e2e suite on every engine of ENGINES (all run; fails if one fails)
test-e2e-engines:
	@rc=0; for eng in $(ENGINES); do $(MAKE) --no-print-directory test-e2e ENGINE=$$eng || rc=1; done; exit $$rc

## test: the whole suite (README's second command runs this through scripts/test.sh)
test: lint test-unit test-fuzz test-e2e-engines

bench:
	./scripts/bench.sh

## bench-bridge: the headline benchmark (issue 13): a container on a clawker-fw
## network vs on a plain bridge, server in its own netns (root; under the e2e lock)
bench-bridge: plugin
	flock -o /tmp/clawker-e2e.lock $(GO) run ./bench/bridge -out bench/results/bridge.txt

## bench-effective: rule change -> effective (proxy, DNS sidecar, BPF routes) at 1, 50
## and 500 endpoints x 10,000 rules, with established streams through the proxy (root)
bench-effective:
	$(GO) run ./bench/effective -out bench/results/effective.txt

clean:
	rm -rf $(BUILD)

# nodeward — see README.md. Every target works on a fresh Debian machine with Go.
GO        ?= go
BIN       := bin/nodeward
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PKGS      := ./...
RUN_DIR   := .run
FUZZTIME  ?= 20s

.PHONY: all build jaeger idp-deps spire-server test test-short bench fuzz lint vet staticcheck fmt-check generate generate-check tidy-check packages run clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nodeward

# The README's test command: lint, then every test with the race detector.
# The broker's end-to-end tests need the real IdP of test/idp (Node.js).
test: lint idp-deps
	$(GO) test -race -count=1 -timeout 10m $(PKGS)

# Builds the real spire-server the agent/spire and test/spire tests run
# (SPIRE pinned in tools/spire/go.mod, cgo for sqlite) into a versioned
# cache dir once (~13 min on 2 cores the first time): .ci/run calls it
# before make test so test timeouts never include the build. It builds the
# real spire-agent of the interop test too (no cgo, into its own versioned
# cache dir; TestBuildAgent).
spire-server:
	$(GO) test -count=1 -timeout 40m -run '^TestBuild(Agent)?$$' ./test/spire/

# Installs the test IdP's npm packages (pinned by package-lock.json) once.
idp-deps: test/idp/node_modules/.package-lock.json

test/idp/node_modules/.package-lock.json: test/idp/package-lock.json
	@if command -v npm >/dev/null; then cd test/idp && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the broker tests against the real IdP will be skipped (CI installs Node.js)"; fi

# The real Jaeger of the trace end-to-end test (tools/jaeger, pinned
# v1.75.0), built once into a versioned cache directory under a file lock.
jaeger:
	@tools/jaeger/build.sh

test-short:
	$(GO) test -count=1 -short $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 -timeout 20m $(PKGS)

# Each native fuzz target for FUZZTIME.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./attestors/selector
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./agent/config
	$(GO) test -run '^$$' -fuzz '^FuzzParseStatus$$' -fuzztime $(FUZZTIME) ./attestors/unix
	$(GO) test -run '^$$' -fuzz '^FuzzParseProcCgroup$$' -fuzztime $(FUZZTIME) ./attestors/cgroup
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./attestors/tpm
	$(GO) test -run '^$$' -fuzz '^FuzzEncoder$$' -fuzztime $(FUZZTIME) ./internal/audit

lint: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) tool staticcheck $(PKGS)

# The project has no .proto files of its own yet: the Workload API uses
# go-spiffe's generated package. These targets keep the contract in place.
generate:
	$(GO) generate $(PKGS)

generate-check: generate
	@git diff --exit-code -- proto || (echo "generated code is stale: run make generate"; exit 1)

tidy-check:
	$(GO) mod tidy -diff

# .deb and .rpm with nfpm (a Go tool pinned in tools/nfpm/go.mod) into dist/.
packages:
	packaging/build-packages.sh dist

# Runs the agent on the embedded default CA with a config granting the
# invoking user an identity. In another shell: ./bin/nodeward fetch x509
run: build
	@mkdir -p $(RUN_DIR)
	@sed -e "s/@UID@/$$(id -u)/g" -e "s/@USER@/$$(id -un)/g" -e "s|@BIN@|$(CURDIR)/$(BIN)|g" packaging/examples/agent-dev.yaml > $(RUN_DIR)/agent.yaml
	@echo "config: $(RUN_DIR)/agent.yaml  (grants $(BIN) run by uid $$(id -u) the ID spiffe://nodeward.local/user/$$(id -un))"
	./$(BIN) agent --config $(RUN_DIR)/agent.yaml

clean:
	rm -rf bin dist $(RUN_DIR)

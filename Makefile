# shardwarden: `make help` lists the targets.
SHELL := bash
.DEFAULT_GOAL := help
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/shardwarden/shardwarden/internal/buildinfo.Version=$(VERSION)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bot, worker and fakediscord into bin/
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

.PHONY: demo
demo: ## run the whole system locally against the fake Discord, with a live view (Ctrl-C stops it)
	go run ./cmd/demo

.PHONY: bench
bench: ## the performance figures beside `nats bench` (prints `bench <name> <value> <unit>`)
	scripts/bench.sh

.PHONY: bench-quick
bench-quick: ## the same figures from shorter runs (under 5 minutes)
	scripts/bench.sh -quick

.PHONY: test
test: ## run the whole test suite with -race (starts a throwaway Postgres unless TEST_DATABASE_URL is set)
	scripts/test.sh

.PHONY: fmt-check
fmt-check: ## fail when gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet: ## go vet the module
	go vet ./...

.PHONY: lint
lint: fmt-check vet secrets ## formatting, static checks and the secret scan

# Pinned tools built from the module proxy (not go.mod tool directives: their
# dependencies would move the module's pins). `go run` caches the built binary.
GITLEAKS := go run github.com/zricethezav/gitleaks/v8@v8.28.0

.PHONY: secrets
secrets: ## scan the whole git history for secrets (gitleaks; test tokens allow-listed in .gitleaks.toml)
	$(GITLEAKS) git --no-banner --redact --config .gitleaks.toml .

.PHONY: vulncheck
vulncheck: ## govulncheck over the module (needs https://vuln.go.dev, or VULNDB=file:///a/copy); not in CI
	@GOBIN=$(CURDIR)/.cache/bin go install golang.org/x/vuln/cmd/govulncheck@v1.1.4
	@.cache/bin/govulncheck $${VULNDB:+-db $$VULNDB} ./... || { rc=$$?; \
	  if [ $$rc -eq 3 ]; then echo >&2 "vulncheck: vulnerable code is reachable (above)."; else \
	  echo >&2 "vulncheck: govulncheck failed (exit $$rc, above). It reads the Go vulnerability database from https://vuln.go.dev, which the build and CI machines cannot reach (only the Go module proxy, Debian and npm answer there): that is why this target is not part of 'make ci'. Run it where vuln.go.dev answers, or set VULNDB=file:///path to a local copy of the database."; fi; \
	  exit $$rc; }

.PHONY: ci
ci: lint test ## what .ci/run runs

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
lint: fmt-check vet ## formatting and static checks

.PHONY: ci
ci: lint test ## what .ci/run runs

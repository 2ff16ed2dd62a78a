# syntax=docker/dockerfile:1
#
# One image for every shardwarden process: /bot, /worker and /fakediscord (the fake
# Discord, for demos and smoke tests; production never starts it).
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t shardwarden:$VERSION .
#
# The stack chooses the binary with `command:`; the default is a bot replica.

# The builder is pinned to the Go release the module is developed and tested with.
ARG GO_IMAGE=golang:1.26.8-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Dependencies first, so a source change does not download modules again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# Static, reproducible binaries with the version stamped in (the same flags as
# `make build`).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    mkdir -p /out && \
    go build -trimpath \
      -ldflags "-s -w -X github.com/shardwarden/shardwarden/internal/buildinfo.Version=${VERSION}" \
      -o /out/ ./cmd/bot ./cmd/worker ./cmd/fakediscord && \
    /out/bot version

# distroless/static: no shell, no package manager, no curl; CA certificates and
# tzdata only. The :nonroot tag runs as uid 65532.
FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="shardwarden" \
      org.opencontainers.image.source="https://github.com/shardwarden/shardwarden" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/bot /out/worker /out/fakediscord /
USER 65532:65532
# The bot's HEALTH_ADDR default; workers listen on 9001, 9002, ... Logs are JSON
# without a terminal.
EXPOSE 8080
# The bot's readiness (database, NATS, lease loop). Worker services override this with
# `/worker healthcheck <name>` in stack.yml. No curl: the binary probes itself.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bot", "healthcheck"]
CMD ["/bot", "run"]

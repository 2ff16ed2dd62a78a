#!/usr/bin/env bash
# bench.sh: the performance figures (issue 8), side by side with `nats bench` on this
# machine. `scripts/bench.sh` is the full run, `scripts/bench.sh -quick` the short
# one. Prints one line per figure: `bench <name> <value> <unit>`.
#
# Starts a throwaway PostgreSQL with pg_stat_statements (statements per heartbeat
# are counted by the database, not by the bot) and installs the pinned nats CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/shardwarden-bench.XXXXXX)
cleanup() {
  scripts/pg.sh stop "$work/pg" || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

BENCH_DATABASE_URL=$(PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" \
  scripts/pg.sh start "$work/pg")
export BENCH_DATABASE_URL

mkdir -p .cache/bin
if [ ! -x .cache/bin/nats ]; then
  echo "bench.sh: installing the nats CLI (natscli v0.5.1) …" >&2
  GOBIN=$PWD/.cache/bin go install github.com/nats-io/natscli/nats@v0.5.1
fi
export NATS_CLI_BIN=$PWD/.cache/bin/nats

go run ./bench "$@"

#!/usr/bin/env bash
# test.sh: the whole test suite, with -race, on a fresh machine.
#
# Uses TEST_DATABASE_URL when set; otherwise starts a throwaway PostgreSQL
# (scripts/pg.sh) and stops it afterwards. Builds nats-server from the pinned module
# for the tests that kill and restart a real NATS process. Extra arguments go to
# `go test` (default: ./...).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/shardwarden-test.XXXXXX)
cleanup() {
  [ -n "${started_pg:-}" ] && scripts/pg.sh stop "$work/pg" || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -z "${TEST_DATABASE_URL:-}" ]; then
  TEST_DATABASE_URL=$(scripts/pg.sh start "$work/pg")
  started_pg=1
  echo "test.sh: throwaway PostgreSQL at $TEST_DATABASE_URL"
fi
export TEST_DATABASE_URL

if [ -z "${NATS_SERVER_BIN:-}" ]; then
  mkdir -p .cache/bin
  go build -o .cache/bin/nats-server github.com/nats-io/nats-server/v2
  NATS_SERVER_BIN=$PWD/.cache/bin/nats-server
fi
export NATS_SERVER_BIN

# e2e scenarios append their summary lines here; printed at the end, pass or fail.
export E2E_SUMMARY_FILE="$work/e2e-summary.txt"
print_summary() {
  if [ -s "$E2E_SUMMARY_FILE" ]; then
    echo "---- end-to-end scenarios ----"
    cat "$E2E_SUMMARY_FILE"
  fi
}

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(./...)
status=0
go test -race -count=1 -timeout 25m "${args[@]}" || status=$?
print_summary
exit $status

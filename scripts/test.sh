#!/usr/bin/env bash
# The test command: start the local test services, then run every test of the workspace once.
#
#   scripts/test.sh              cargo test --workspace --all-targets --no-fail-fast, then
#                                the doc tests
#   scripts/test.sh ARGS...      cargo test ARGS... (for example: -p outflow-testkit)
#
# Services that were already running are kept running. Those this script started are
# stopped at the end when OUTFLOW_STOP_SERVICES=1. CARGO_TARGET_DIR defaults to
# /var/tmp/outflow-target. The exit code is cargo's (the first failing run's).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES="$REPO/scripts/services.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outflow-target}"

ALL=(postgres nats moto tansu)
before="$("$SERVICES" status 2>/dev/null || true)"
started=()

stop_started() {
    if [[ "${OUTFLOW_STOP_SERVICES:-0}" == 1 && ${#started[@]} -gt 0 ]]; then
        echo "[test] stopping the services this run started: ${started[*]}"
        "$SERVICES" stop "${started[@]}" || echo "[test] stopping services failed" >&2
    fi
}
trap stop_started EXIT

# Record what this run starts before starting it, so a start that fails half-way is still
# cleaned up.
for svc in "${ALL[@]}"; do
    grep -Eq "^$svc +running" <<<"$before" || started+=("$svc")
done
"$SERVICES" start

ENV_FILE="$("$SERVICES" env)"
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
export OUTFLOW_SERVICES_ENV="$ENV_FILE"

cd "$REPO"
rc=0
if [[ $# -gt 0 ]]; then
    cargo test "$@" || rc=$?
else
    # --no-fail-fast: one failing test binary must not hide the results of the others.
    echo "[test] cargo test --workspace --all-targets (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo test --workspace --all-targets --no-fail-fast || rc=$?
    echo "[test] cargo test --workspace --doc"
    cargo test --workspace --doc --no-fail-fast || { r=$?; ((rc)) || rc=$r; }
fi
exit "$rc"

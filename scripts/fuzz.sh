#!/usr/bin/env bash
# Fuzzes the pgoutput decoder and the value mapping (connectors/postgres/fuzz, target
# `decode`) for a short time, on the stable toolchain, starting from the committed seed
# corpus. Exits non-zero when the fuzzer finds an input that panics; that input is saved
# in connectors/postgres/fuzz/artifacts/decode/ and its bytes are printed.
#
#   scripts/fuzz.sh [SECONDS]    fuzz for SECONDS (default 30), after building
#
# Installs cargo-fuzz (pinned below) when it is missing. Builds in "$CARGO_TARGET_DIR/fuzz"
# (CARGO_TARGET_DIR defaults to /var/tmp/outflow-target), so the coverage flags do not
# invalidate the main build.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The cargo-fuzz release this script was tested with.
CARGO_FUZZ_VERSION="0.13.2"

secs="${1:-30}"
if [[ ! "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]: SECONDS must be a positive integer, got '$secs'" >&2
    exit 2
fi

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outflow-target}/fuzz"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$REPO/connectors/postgres/fuzz"
# --sanitizer none passes no -Z flag, so stable rustc builds it: libfuzzer-sys's coverage
# flags (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*) are stable, and panics
# (including overflow checks, on by default) abort the run. libFuzzer writes new inputs to
# the first corpus directory, a scratch one, so the committed seeds stay as they are.
# The per-input NEW, REDUCE and NEW_FUNC lines are left out of the log; the INITED, pulse
# and DONE lines show the coverage (cov:) growing.
echo "[fuzz] decode for ${secs}s (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
set +e
cargo fuzz run decode --sanitizer none "$work" corpus/decode -- \
    -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -Ev $'^(#[0-9]+\t(NEW|REDUCE) |\tNEW_FUNC)'
rc=${PIPESTATUS[0]}
set -e
if ((rc)); then
    echo "[fuzz] cargo fuzz failed (exit $rc): a build error, or a crash (input above)" >&2
else
    echo "[fuzz] decode ran ${secs}s without a crash; $(find "$work" -type f | wc -l) new inputs"
fi
exit "$rc"

#!/usr/bin/env bash
# Rewrites the committed seed corpus of the `decode` target from the captured pgoutput
# messages: one file per distinct message of ../tests/fixtures/pgoutput.hex, named
# seed-<first 16 hex digits of its sha1>. Rerun it after tests/fixtures/capture.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fixture="$here/../tests/fixtures/pgoutput.hex"
out="$here/corpus/decode"
mkdir -p "$out"
rm -f "$out"/seed-*
awk '{print $3}' "$fixture" | sort -u | while read -r hex; do
    name="seed-$(printf '%s' "$hex" | sha1sum | cut -c1-16)"
    perl -e 'print pack("H*", $ARGV[0])' "$hex" >"$out/$name"
done
echo "$(find "$out" -name 'seed-*' | wc -l) seeds in $out"

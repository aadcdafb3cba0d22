#!/usr/bin/env bash
# The main job on embedded defaults: a throwaway Postgres, an outbox table, sample orders
# written through the outbox writer, and outflow streaming them to stdout.
#
#   scripts/demo.sh [COUNT]      (default 10 orders)
#
# Events are printed on stdout, one JSON envelope per line; progress goes to stderr.
set -euo pipefail

COUNT="${1:-10}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outflow-target}"
PG_BIN="${OUTFLOW_PG_BIN:-/usr/lib/postgresql/15/bin}"
say() { echo "[demo] $*" >&2; }

[[ -x "$PG_BIN/initdb" ]] || { say "Postgres server binaries not found in $PG_BIN (apt-get install postgresql-15, or set OUTFLOW_PG_BIN)"; exit 1; }

say "building outflow and the order service example"
(cd "$REPO" && cargo build -q -p outflow -p outflow-outbox --example order_service)
OUTFLOW="$CARGO_TARGET_DIR/debug/outflow"
ORDERS="$CARGO_TARGET_DIR/debug/examples/order_service"

tmp="$(mktemp -d /tmp/outflow-demo.XXXXXX)"
chmod 755 "$tmp"
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [[ "$(id -u)" == 0 ]]; then chown postgres "$tmp"; fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
outflow_pid=""
cleanup() {
    [[ -n "$outflow_pid" ]] && kill "$outflow_pid" 2>/dev/null || true
    as_pg "$PG_BIN/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

say "starting a throwaway Postgres on 127.0.0.1:$port (wal_level=logical)"
as_pg "$PG_BIN/initdb" -D "$tmp/data" -A trust -U postgres >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$tmp/data" -l "$tmp/postgres.log" -w -o \
    "-c wal_level=logical -c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp" \
    start >/dev/null
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE shop"
URL="postgres://postgres@127.0.0.1:$port/shop"

say "creating the orders and outbox tables"
"$ORDERS" "$URL" 0 >/dev/null

say "starting: outflow postgres --url $URL --table public.outbox --to stdout"
mkdir -p "$tmp/state"
"$OUTFLOW" postgres --url "$URL" --table public.outbox --pipeline demo \
    --state-dir "$tmp/state" --to stdout >"$tmp/events.jsonl" 2>"$tmp/outflow.log" &
outflow_pid=$!
for _ in $(seq 1 100); do
    grep -q "replication started" "$tmp/outflow.log" && break
    kill -0 "$outflow_pid" 2>/dev/null || { cat "$tmp/outflow.log" >&2; exit 1; }
    sleep 0.1
done

say "placing $COUNT orders, each with its OrderCreated event in the same transaction"
"$ORDERS" "$URL" "$COUNT" >&2

for _ in $(seq 1 300); do
    [[ "$(wc -l <"$tmp/events.jsonl")" -ge "$COUNT" ]] && break
    sleep 0.1
done
cat "$tmp/events.jsonl"
got="$(wc -l <"$tmp/events.jsonl")"
kill -TERM "$outflow_pid"
wait "$outflow_pid" && status=0 || status=$?
outflow_pid=""
say "outflow delivered $got of $COUNT events and stopped with exit code $status"
[[ "$got" -eq "$COUNT" && "$status" -eq 0 ]]

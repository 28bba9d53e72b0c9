#!/usr/bin/env bash
# Inbound and outbound through listcrypt's milters with the state in SQLite and in PostgreSQL,
# in the same run: the same binary, list key, member certificates and messages, one backend
# after the other (order A B B A, so that drift shows).
#
# Two sites under one work directory share the list key (passphrase-protected) and member
# certificates; one keeps state, key and certificates in files and SQLite (state_dir, WAL,
# synchronous=FULL), the other in a throwaway PostgreSQL cluster
# (Debian's binaries, initdb as user nobody, unix socket only, fsync and synchronous_commit on:
# the defaults, as in production). `listcrypt serve` runs on one site at a time, driven by
# backends/drive.py, a milter client speaking to its unix sockets:
#   inbound:  N distinct ~10 KiB posts signed by alice and encrypted to the list key
#             (accept-rate/makeposts.py), from alice to the list; each one is decrypted,
#             verified and recorded in the replay record;
#   outbound: M distinct list messages from LIST-bounces@ to MEMBERS bound members, batch_size
#             BATCH: each is encrypted and signed per batch, the extra batches are reinjected
#             to an SMTP sink in drive.py and journaled.
# SESSIONS transactions at a time. Output: per run messages, wall seconds, messages/s, median
# and p90 ms per transaction, outcomes; then the PostgreSQL/SQLite ratios. Timings are never
# asserted anywhere.
#
# Usage (as root, postgresql and gnupg installed):  contrib/bench/backends.sh
# Environment: N (default 200), M (default 100), MEMBERS (default 10), BATCH (default 5),
#   SESSIONS (default 4), WARMUP (default 10), LISTCRYPT (binary; default target/release/listcrypt
#   if built, else target/debug/listcrypt: say which in any report, crypto in a debug build is
#   several times slower and makes the store's share look smaller), KEEP=1 keeps the work dir,
#   PGLOG=1 logs every SQL statement to $W/pg/log (for counting round trips; slows PostgreSQL).
set -euo pipefail

N=${N:-200}
M=${M:-100}
MEMBERS=${MEMBERS:-10}
BATCH=${BATCH:-5}
SESSIONS=${SESSIONS:-4}
WARMUP=${WARMUP:-10}
LIST=enc@lists.example.test
BOUNCES=enc-bounces@lists.example.test
ALICE=alice@example.net
PY=/usr/bin/python3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -z ${LISTCRYPT:-} ]]; then
    LISTCRYPT=$REPO/target/release/listcrypt
    [[ -x $LISTCRYPT ]] || LISTCRYPT=$REPO/target/debug/listcrypt
fi

die() { echo "backends: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL runs as nobody)"
[[ -x $LISTCRYPT ]] || die "$LISTCRYPT missing: cargo build"
command -v gpg >/dev/null || die "gpg not found (apt-get install gnupg)"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL server binaries (apt-get install postgresql)"
((N > 0 && M > 0 && MEMBERS > 1 && BATCH > 0 && SESSIONS > 0 && WARMUP > 0)) || die "bad sizes"

W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-backends.XXXXXX")
chmod 755 "$W" # nobody must reach the cluster's directory below it
PG_PID=
LC_PID=

stop_pid() { # PID: TERM, wait up to 10 s, KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    [[ -n $LC_PID ]] && stop_pid "$LC_PID"
    [[ -n $PG_PID ]] && stop_pid "$PG_PID"
    gpgconf --homedir "$W/gnupg" --kill all 2>/dev/null || true
    if [[ ${KEEP:-} == 1 ]]; then echo "# kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
quiet() { "$@" >"$W/last.out" 2>&1 || { cat "$W/last.out" >&2; die "failed: $*"; }; }

# --- PostgreSQL: a throwaway cluster on a unix socket, trust on that socket only.
mkdir -m 700 "$W/pg" && chown nobody: "$W/pg"
quiet runuser -u nobody -- "$PGBIN/initdb" -D "$W/pg/data" --auth=trust --username=listcrypt \
    --encoding=UTF8
PG_OPTS=(-c listen_addresses=)
[[ ${PGLOG:-} == 1 ]] && PG_OPTS+=(-c log_statement=all -c log_line_prefix='%m [%p] ')
runuser -u nobody -- "$PGBIN/postgres" -D "$W/pg/data" -k "$W/pg" "${PG_OPTS[@]}" \
    >"$W/pg/log" 2>&1 &
PG_PID=$!
for ((i = 0; i < 300; i++)); do
    "$PGBIN/pg_isready" -q -h "$W/pg" && break
    sleep 0.1
done
"$PGBIN/pg_isready" -q -h "$W/pg" || die "PostgreSQL did not start: $(tail -5 "$W/pg/log")"
quiet runuser -u nobody -- "$PGBIN/createdb" -h "$W/pg" -U listcrypt listcrypt
PG_URL="postgresql://listcrypt@$(printf %s "$W/pg" | sed 's,/,%2F,g')/listcrypt?sslmode=disable"
SINK_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

site() { # NAME [EXTRA CONFIG LINE]
    local d=$W/$1
    mkdir -p "$d/lists.d" "$d/run"
    cat >"$d/listcrypt.toml" <<CONF
inbound_socket = "unix:$d/run/inbound.sock"
outbound_socket = "unix:$d/run/outbound.sock"
reinject_smtp = "127.0.0.1:$SINK_PORT"
policy_dir = "$d/lists.d"
keyring_dir = "$d/keyrings"
state_dir = "$d/state"
log = "stderr"
log_level = "warn"
passphrase_file = "$W/passphrase"
${2:-}
CONF
}
lc() { local s=$1; shift; "$LISTCRYPT" -c "$W/$s/listcrypt.toml" "$@"; }
# A database holds list keys only passphrase-protected: both sites protect theirs.
echo "bench passphrase" >"$W/passphrase" && chmod 600 "$W/passphrase"
site sqlite
site postgresql "database_url = \"$PG_URL\""

# --- Keys: the list key made once on the SQLite site and moved into the database the way a
# site moves to PostgreSQL (`list upload`); members bound on both sites.
quiet lc sqlite list create "$LIST"
mkdir -p "$W/postgresql/keyrings"
cp -a "$W/sqlite/keyrings/." "$W/postgresql/keyrings/"
cp -a "$W/sqlite/lists.d/." "$W/postgresql/lists.d/"
quiet lc postgresql list upload "$LIST"
rm -r "$W/postgresql/keyrings/lists"
for s in sqlite postgresql; do
    sed -i "s/^batch_size = .*/batch_size = $BATCH/" "$W/$s/lists.d/$LIST.toml"
done
lc sqlite list export-key "$LIST" >"$W/list.asc"
mkdir -m 700 "$W/gnupg"
gpgq() { gpg --homedir "$W/gnupg" --batch --no-tty --quiet --pinentry-mode loopback --passphrase '' "$@"; }
quiet gpgq --import "$W/list.asc"
LIST_FPR=$(gpgq --with-colons --list-keys "<$LIST>" | awk -F: '/^fpr/ {print $10; exit}')
RCPTS=()
for ((i = 0; i < MEMBERS; i++)); do
    addr=$([[ $i -eq 0 ]] && echo "$ALICE" || printf 'member%02d@example.net' "$i")
    quiet gpgq --quick-gen-key "Member $i <$addr>" ed25519 sign never
    fpr=$(gpgq --with-colons --list-keys "<$addr>" | awk -F: '/^fpr/ {print $10; exit}')
    quiet gpgq --quick-add-key "$fpr" cv25519 encr never
    gpgq --armor --export "$fpr" >"$W/$addr.asc"
    for s in sqlite postgresql; do quiet lc "$s" member add "$LIST" "$addr" "$W/$addr.asc"; done
    RCPTS+=("$addr")
    [[ $i -eq 0 ]] && ALICE_FPR=$fpr
done

# --- Posts, before any timing: a warm-up set and two measured sets (A B B A: the replay
# record is per site, so each site sees each post once per set).
posts() { # DIR COUNT TAG
    quiet "$PY" "$HERE/accept-rate/makeposts.py" --home "$W/gnupg" --signer "$ALICE_FPR" \
        --recipient "$LIST_FPR" --count "$2" --body-bytes 10240 --sender "$ALICE" \
        --list "$LIST" --tag "$3" --out "$1"
}
posts "$W/posts-warm" "$WARMUP" warm
posts "$W/posts-1" "$N" one
posts "$W/posts-2" "$N" two

serve() { # SITE
    rm -f "$W/$1/run/"*.sock
    "$LISTCRYPT" -c "$W/$1/listcrypt.toml" serve 2>>"$W/$1/serve.log" &
    LC_PID=$!
    for ((i = 0; i < 300; i++)); do
        [[ -S $W/$1/run/inbound.sock && -S $W/$1/run/outbound.sock ]] && return 0
        kill -0 "$LC_PID" 2>/dev/null || die "serve on $1 exited: $(tail -5 "$W/$1/serve.log")"
        sleep 0.1
    done
    die "serve on $1: no sockets"
}
drive() { # SITE inbound|outbound SET
    local d=$W/$1
    if [[ $2 == inbound ]]; then
        "$PY" "$HERE/backends/drive.py" inbound "$d/run/inbound.sock" "$SESSIONS" "$ALICE" "$LIST" "$W/posts-$3"
    else
        "$PY" "$HERE/backends/drive.py" outbound "$d/run/outbound.sock" "$SESSIONS" "$BOUNCES" \
            "$([[ $3 == warm ]] && echo "$WARMUP" || echo "$M")" "$SINK_PORT" "${RCPTS[@]}"
    fi
}

echo "# listcrypt $LISTCRYPT ($("$LISTCRYPT" --version 2>/dev/null || echo '?')); PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"
echo "# inbound N=$N ~10 KiB posts; outbound M=$M messages to $MEMBERS members, batch_size $BATCH; $SESSIONS sessions; $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-10s %-8s %-4s %6s %7s %7s %9s %8s  %s\n' backend dir set msgs wall_s msg/s median_ms p90_ms outcomes
declare -A RATE MEDIAN
for pass in "sqlite 1" "postgresql 1" "postgresql 2" "sqlite 2"; do
    read -r s set <<<"$pass"
    serve "$s"
    [[ $set == 1 ]] && { drive "$s" inbound warm >/dev/null; drive "$s" outbound warm >/dev/null; }
    for dir in inbound outbound; do
        read -r msgs wall rate median p90 outcomes < <(drive "$s" "$dir" "$set")
        printf '%-10s %-8s %-4s %6s %7s %7s %9s %8s  %s\n' "$s" "$dir" "$set" "$msgs" "$wall" "$rate" "$median" "$p90" "$outcomes"
        RATE[$s.$dir]="${RATE[$s.$dir]:-} $rate"
        MEDIAN[$s.$dir]="${MEDIAN[$s.$dir]:-} $median"
    done
    stop_pid "$LC_PID"
    LC_PID=
done
mean() { awk '{s=0; for (i=1;i<=NF;i++) s+=$i; printf "%.2f", s/NF}' <<<"$1"; }
for dir in inbound outbound; do
    r=$(awk -v p="$(mean "${RATE[postgresql.$dir]}")" -v s="$(mean "${RATE[sqlite.$dir]}")" 'BEGIN {printf "%.2f", p/s}')
    m=$(awk -v p="$(mean "${MEDIAN[postgresql.$dir]}")" -v s="$(mean "${MEDIAN[sqlite.$dir]}")" 'BEGIN {printf "%.2f (%+.1f ms)", p/s, p-s}')
    echo "# $dir: PostgreSQL/SQLite messages/s ratio $r; median latency ratio $m"
done

#!/usr/bin/env bash
# Postfix accept rate for ~10 KiB encrypted posts: through listcrypt's inbound milter vs no
# milter and vs a no-op milter, in the same run, on the same Postfix, with the same bytes.
#
# One throwaway Postfix (everything chroot n, loopback only, delivery to discard: so delivery
# costs nothing) with four smtpd listeners (five with BASELINE) on free 127.0.0.1 ports:
#   inbound   -o smtpd_milters=unix:$W/run/inbound.sock   (listcrypt serve, unix socket)
#   noop      -o smtpd_milters=unix:$W/run/noop.sock      (examples/noop_milter.rs: the same
#             milter library and stages as listcrypt, every answer Continue)
#   rewrite   -o smtpd_milters=unix:$W/run/rewrite.sock   (noop_milter --rewrite: listcrypt's
#             header edits and a body replacement of the decrypted size, without OpenPGP: the
#             floor for any milter that rewrites posts this way)
#   nomilter  -o smtpd_milters=
# N x ROUNDS distinct posts (each a BODY_BYTES text body with its own counter, signed by the
# member alice and encrypted to the list key with gpg -z 0, RFC 3156 multipart/encrypted) are
# made before any timing. The sender (accept-rate/send.py, Python smtplib threads) sends N to a
# listener with CONCURRENCY sessions, one message per transaction. Order: warm-up on every
# listener with WARMUP posts of their own (a post the milter saw once would be a replay later),
# then ROUNDS rounds of nomilter, noop, rewrite, inbound (and baseline), each round with its
# own N posts, the same for every listener in it; the queue is drained between runs. Every
# post on an inbound run must be accepted (250) and enter the replay record as new; otherwise
# the script fails, since such a rate would measure refusals.
#
# Output: per listener, over all rounds: accepted, wall seconds, messages/s, CPU ms per message
# of the milter (listcrypt, or the no-op milter on its run), of the sender and of Postfix (the
# master and its children), and how busy all cores were (on a shared machine other work shows
# up there). Then each ratio (inbound/nomilter, inbound/noop, rewrite/noop, rewrite/nomilter,
# ...) as the median over the rounds, with the lowest and highest: this machine's speed drifts
# by 10-30% within minutes, so a ratio is taken only between runs of the same round.
# Everything runs on this machine: the sender, Postfix and listcrypt share the cores, so where
# the cores are saturated the ratio mostly reflects the extra CPU per message. Timings are
# never asserted anywhere.
#
# Usage (as root, Postfix and gnupg installed):
#   contrib/bench/accept-rate.sh
# Environment: N (posts per run, default 2000: runs of a few seconds; with 300 the no-milter
#   run is over in half a second and the ratio is mostly noise), ROUNDS (default 3),
#   CONCURRENCY (default 8),
#   PER_SESSION (messages per SMTP session, default 1), WARMUP (default 20), BODY_BYTES
#   (default 10240),
#   LISTCRYPT (binary; default target/release/listcrypt, built with cargo build --release if
#   missing), BASELINE (a second build, e.g. the session's starting one: then a listener
#   baseline runs it, with its own state directory, on the same posts right after inbound, and
#   the table gives baseline/inbound; the keyring and policies are shared),
#   NOOP_MILTER (default target/release/examples/noop_milter, built with cargo build
#   --release --example noop_milter if missing), KEEP=1 (keep the work directory),
#   PERF_OUT=FILE (`perf record -g` of listcrypt during the first inbound run; the report goes there;
#   with KEEP=1 perf.data stays in the work directory), PERF_FREQ (samples/s, default 499),
#   PERF_ARGS (perf record's call-graph options, default -g; e.g. "--call-graph dwarf"),
#   CSW=1 (the milter's context switches and system calls per message, from `perf stat`, on
#   the milter runs; STAT_EVENTS overrides the event list).
# Needs: bash >= 4, postfix (postfix, postconf, postqueue), gpg, gpgconf, /usr/bin/python3,
#   sqlite3 (optional: replay-record check).
set -euo pipefail
# Library errors capture backtraces under RUST_BACKTRACE (listcrypt turns that off itself since
# 2026-12-07; a BASELINE build from before would pay for it): neither daemon gets it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

N=${N:-2000}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-8}
PER_SESSION=${PER_SESSION:-1}
WARMUP=${WARMUP:-20}
BODY_BYTES=${BODY_BYTES:-10240}
LIST=enc@lists.example.test
MEMBER=alice@example.net
PY=/usr/bin/python3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LISTCRYPT=${LISTCRYPT:-$REPO/target/release/listcrypt}
NOOP_MILTER=${NOOP_MILTER:-$REPO/target/release/examples/noop_milter}

die() { echo "accept-rate: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (throwaway Postfix instance)"
for tool in postfix postconf postqueue gpg gpgconf; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install postfix gnupg)"
done
[[ -x $PY ]] || die "$PY not found"
getent passwd postfix >/dev/null || die "no user postfix (apt-get install postfix)"
getent group postdrop >/dev/null || die "no group postdrop"
((N > 0 && CONCURRENCY > 0 && PER_SESSION > 0 && WARMUP > 0)) || die "N, CONCURRENCY, PER_SESSION, WARMUP must be > 0"

if [[ ! -x $LISTCRYPT ]]; then
    echo "# $LISTCRYPT missing: cargo build --release"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
    [[ -x $LISTCRYPT ]] || die "$LISTCRYPT still missing after the build"
fi
if [[ ! -x $NOOP_MILTER ]]; then
    echo "# $NOOP_MILTER missing: cargo build --release --example noop_milter"
    (cd "$REPO" && cargo build --release --example noop_milter) || die "building noop_milter failed"
    [[ -x $NOOP_MILTER ]] || die "$NOOP_MILTER still missing after the build"
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-accept-rate.XXXXXX")
chmod 755 "$W" # user postfix must reach the milter socket and the queue below it
ETC=$W/postfix/etc
SPOOL=$W/postfix/spool
ALICE_HOME=$W/gnupg-alice
LC_PID=
BASE_PID=
NOOP_PID=
REWRITE_PID=
PF_STARTED=

stop_pid() { # PID [SECONDS]: TERM, wait, KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < ${2:-10} * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
master_pid() { [[ -r $SPOOL/pid/master.pid ]] && tr -dc 0-9 <"$SPOOL/pid/master.pid"; }
cleanup() {
    local rc=$? pid
    set +e
    if [[ -n $PF_STARTED ]]; then
        pid=$(master_pid)
        postfix -c "$ETC" stop >/dev/null 2>&1
        [[ -n $pid ]] && stop_pid "$pid" 5
    fi
    if [[ -n $LC_PID ]]; then
        stop_pid "$LC_PID" 10
        wait "$LC_PID" 2>/dev/null
    fi
    if [[ -n $BASE_PID ]]; then
        stop_pid "$BASE_PID" 10
        wait "$BASE_PID" 2>/dev/null
    fi
    for pid in $NOOP_PID $REWRITE_PID; do
        stop_pid "$pid" 5
        wait "$pid" 2>/dev/null
    done
    [[ -d $ALICE_HOME ]] && gpgconf --homedir "$ALICE_HOME" --kill all >/dev/null 2>&1
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "# kept $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy: a `cargo build` elsewhere during the run cannot swap the binary under us.
cp "$LISTCRYPT" "$W/listcrypt"
cp "$NOOP_MILTER" "$W/noop_milter"
if [[ -n ${BASELINE:-} ]]; then
    [[ -x $BASELINE ]] || die "BASELINE=$BASELINE is not an executable"
    cp "$BASELINE" "$W/listcrypt-baseline"
    BIN_INFO_BASE="sha256 $(sha256sum "$W/listcrypt-baseline" | cut -c1-12)"
fi
BIN_INFO="binary $(date -u -r "$LISTCRYPT" '+%F %T'), sha256 $(sha256sum "$W/listcrypt" | cut -c1-12)"
BIN_VERSION=$("$W/listcrypt" --version 2>/dev/null | awk '{print $NF}')
LISTCRYPT=$W/listcrypt
LOG=$W/setup.log
run() { "$@" >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; die "failed: $*"; }; }
gpga() { gpg --homedir "$ALICE_HOME" --batch --no-tty --pinentry-mode loopback --passphrase '' "$@"; }
now() { date +%s.%N; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- listcrypt: config, list, member, daemon --------------------------------------------
mkdir -p "$W/lists.d" "$W/keyrings" "$W/state" "$W/run" "$W/log"
chmod 755 "$W/run"
CFG=$W/listcrypt.toml
cat >"$CFG" <<EOF
inbound_socket = "unix:$W/run/inbound.sock"
outbound_socket = "unix:$W/run/outbound.sock"
socket_group = "postfix"
policy_dir = "$W/lists.d"
keyring_dir = "$W/keyrings"
state_dir = "$W/state"
log = "stderr"
log_level = "warn"
EOF
echo "# setup in $W"
t0=$(now)
run "$LISTCRYPT" -c "$CFG" list create "$LIST"
"$LISTCRYPT" -c "$CFG" list export-key "$LIST" >"$W/list.asc" 2>>"$LOG" || die "list export-key failed"

mkdir -m 700 "$ALICE_HOME"
run gpga --quick-gen-key "alice <$MEMBER>" future-default default never
ALICE_FPR=$(gpga --with-colons --list-keys "<$MEMBER>" 2>>"$LOG" | awk -F: '$1=="fpr"{print $10; exit}')
[[ -n $ALICE_FPR ]] || die "no fingerprint for alice"
gpga --armor --export "$ALICE_FPR" >"$W/alice.asc"
run "$LISTCRYPT" -c "$CFG" member add "$LIST" "$MEMBER" "$W/alice.asc"
run gpga --import "$W/list.asc"
LIST_FPR=$(gpga --with-colons --show-keys "$W/list.asc" 2>>"$LOG" | awk -F: '$1=="fpr"{print $10; exit}')
[[ -n $LIST_FPR ]] || die "no fingerprint for the list key"

# The baseline gets its own copy of the state (list, member binding), taken before either
# daemon runs, so that each keeps its own replay record.
[[ -n ${BASELINE:-} ]] && cp -a "$W/state" "$W/state-baseline"
# serve NAME BINARY CONFIG SOCKET: starts `BINARY -c CONFIG serve` (log in log/NAME.log), sets
# SERVED_PID, and waits up to 10 s for its inbound SOCKET.
serve() {
    "$2" -c "$3" serve 2>"$W/log/$1.log" &
    SERVED_PID=$!
    for ((i = 0; i < 200; i++)); do
        [[ -S $4 ]] && return 0
        kill -0 "$SERVED_PID" 2>/dev/null || { cat "$W/log/$1.log" >&2; die "$1 serve exited"; }
        sleep 0.05
    done
    stop_pid "$SERVED_PID" 5
    die "$1 made no inbound socket in 10 s"
}
serve listcrypt "$LISTCRYPT" "$CFG" "$W/run/inbound.sock"
LC_PID=$SERVED_PID
if [[ -n ${BASELINE:-} ]]; then
    sed -e "s|$W/run/inbound.sock|$W/run/baseline.sock|" -e "s|$W/run/outbound.sock|$W/run/baseline-outbound.sock|" \
        -e "s|^state_dir = .*|state_dir = \"$W/state-baseline\"|" "$CFG" >"$W/listcrypt-baseline.toml"
    serve listcrypt-baseline "$W/listcrypt-baseline" "$W/listcrypt-baseline.toml" "$W/run/baseline.sock"
    BASE_PID=$SERVED_PID
fi
"$W/noop_milter" "$W/run/noop.sock" 2>"$W/log/noop.log" &
NOOP_PID=$!
"$W/noop_milter" "$W/run/rewrite.sock" --rewrite 2>"$W/log/rewrite.log" &
REWRITE_PID=$!
for ((i = 0; i < 200; i++)); do
    [[ -S $W/run/noop.sock && -S $W/run/rewrite.sock ]] && break
    sleep 0.05
done
[[ -S $W/run/noop.sock && -S $W/run/rewrite.sock ]] || die "noop_milter made no socket in 10 s"

# ---- posts (before any timing) -----------------------------------------------------------
# posts/run: the N measured posts; posts/warm: WARMUP others, never sent again.
read -r SIZE GEN_S < <("$PY" "$HERE/accept-rate/makeposts.py" --home "$ALICE_HOME" \
    --signer "$ALICE_FPR" --recipient "$LIST_FPR" --count $((N * ROUNDS + WARMUP)) \
    --body-bytes "$BODY_BYTES" --sender "$MEMBER" --list "$LIST" \
    --tag "$(basename "$W")" --out "$W/posts/all") || die "making posts failed"
mkdir -p "$W/posts/run" "$W/posts/warm"
mapfile -t ALL < <(find "$W/posts/all" -name 'post-*.eml' | sort)
((${#ALL[@]} == N * ROUNDS + WARMUP)) || die "made ${#ALL[@]} posts, wanted $((N * ROUNDS + WARMUP))"
WARM_POSTS=("${ALL[@]:N*ROUNDS}")
echo "# made $((N * ROUNDS + WARMUP)) distinct posts in ${GEN_S} s: body $BODY_BYTES B, mean post $SIZE B on the wire"

# ---- Postfix -----------------------------------------------------------------------------
mkdir -p "$ETC" "$SPOOL" "$W/postfix/data" "$W/postfix/log"
chmod 755 "$W/postfix" "$ETC" "$SPOOL" "$W/postfix/log"
chown postfix: "$W/postfix/data"
chmod 700 "$W/postfix/data"
P_MILTER=$(free_port)
P_PLAIN=$(free_port)
while [[ $P_PLAIN == "$P_MILTER" ]]; do P_PLAIN=$(free_port); done
P_NOOP=$(free_port)
while [[ $P_NOOP == "$P_MILTER" || $P_NOOP == "$P_PLAIN" ]]; do P_NOOP=$(free_port); done
P_B=$(free_port)
while [[ $P_B == "$P_MILTER" || $P_B == "$P_PLAIN" || $P_B == "$P_NOOP" ]]; do P_B=$(free_port); done
P_RW=$(free_port)
while [[ $P_RW == "$P_MILTER" || $P_RW == "$P_PLAIN" || $P_RW == "$P_NOOP" || $P_RW == "$P_B" ]]; do P_RW=$(free_port); done
cat >"$ETC/main.cf" <<EOF
# Throwaway Postfix for contrib/bench/accept-rate.sh
compatibility_level = 3.6
queue_directory = $SPOOL
data_directory = $W/postfix/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.lists.example.test
mydomain = lists.example.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = lists.example.test
relay_recipient_maps =
transport_maps = inline:{ lists.example.test=discard: }
relay_transport = discard:
default_transport = discard:
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
milter_default_action = tempfail
milter_protocol = 6
smtpd_milters =
non_smtpd_milters =
maillog_file = $W/postfix/log/maillog
maillog_file_prefixes = $W/postfix/log
EOF
cat >"$ETC/master.cf" <<EOF
# Throwaway Postfix for contrib/bench/accept-rate.sh; every service chroot n.
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
127.0.0.1:$P_MILTER inet n - n - - smtpd
  -o syslog_name=postfix/inbound
  -o smtpd_milters=unix:$W/run/inbound.sock
127.0.0.1:$P_PLAIN inet n - n - - smtpd
  -o syslog_name=postfix/nomilter
  -o smtpd_milters=
127.0.0.1:$P_NOOP inet n - n - - smtpd
  -o syslog_name=postfix/noop
  -o smtpd_milters=unix:$W/run/noop.sock
127.0.0.1:$P_RW inet n - n - - smtpd
  -o syslog_name=postfix/rewrite
  -o smtpd_milters=unix:$W/run/rewrite.sock
127.0.0.1:$P_B inet n - n - - smtpd
  -o syslog_name=postfix/baseline
  -o smtpd_milters=unix:$W/run/baseline.sock
EOF
postconf -c "$ETC" -n >/dev/null 2>>"$LOG" || { cat "$LOG" >&2; die "postconf rejects main.cf"; }
PF_STARTED=1
run postfix -c "$ETC" start
port_open() { "$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null; }
for ((i = 0; i < 200; i++)); do
    port_open "$P_MILTER" && port_open "$P_PLAIN" && port_open "$P_NOOP" && port_open "$P_RW" && break
    sleep 0.1
done
if ! { port_open "$P_MILTER" && port_open "$P_PLAIN" && port_open "$P_NOOP" && port_open "$P_RW"; }; then
    tail -n 20 "$W/postfix/log/maillog" >&2
    die "Postfix listeners not up in 20 s"
fi
awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "# setup took %.1f s; Postfix listeners: inbound 127.0.0.1:%s, nomilter 127.0.0.1:%s, noop 127.0.0.1:%s\n", b - a, "'"$P_MILTER"'", "'"$P_PLAIN"'", "'"$P_NOOP"'" }'

drain() {
    local i
    for ((i = 0; i < 1200; i++)); do
        postqueue -c "$ETC" -p 2>/dev/null | grep -q 'Mail queue is empty' && return 0
        sleep 0.1
    done
    postqueue -c "$ETC" -p | tail -n 5 >&2
    die "queue not empty after 120 s"
}
replay_rows() { # [STATE DIR]
    if command -v sqlite3 >/dev/null; then
        sqlite3 -readonly "${1:-$W/state}/state.sqlite" "SELECT count(*) FROM replay" 2>/dev/null || echo "?"
    else
        echo "?"
    fi
}
milter_events() { grep -cE 'milter-(reject|discard|hold)|milter.*(not responding|failed|timeout)' "$W/postfix/log/maillog" || true; }

CLK_TCK=$(getconf CLK_TCK)
lc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # PID: user+system CPU of the milter
sys_ticks() { awk '{ print $15 }' "/proc/$1/stat"; }      # PID: its system CPU alone

# Postfix's CPU: the master's own and its reaped children's, plus each live child's (smtpd,
# cleanup, qmgr, ...; Postfix reuses them, so most are alive at both readings).
pf_ticks() {
    local m
    m=$(master_pid) || { echo 0; return; }
    {
        awk '{ print $14 + $15 + $16 + $17 }' "/proc/$m/stat"
        for c in $(pgrep -P "$m"); do awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || true; done
    } | awk '{ s += $1 } END { print s + 0 }'
}
cpu_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat; } # busy idle

# send LABEL PORT FILES... -> sets ACC REF SECS, LC_MS and PY_MS (the listener's milter's, i.e.
# listcrypt's or for noop the no-op milter's, and the sender's
# CPU ms per message) and BUSY (% of all cores busy, whoever used them); prints one line
send() {
    local label=$1 port=$2 out t0 t1 s0 s1 p0 p1 c0 c1
    shift 2
    local pid=$LC_PID
    [[ $label == *noop ]] && pid=$NOOP_PID
    [[ $label == *rewrite ]] && pid=$REWRITE_PID
    [[ $label == *baseline ]] && pid=$BASE_PID
    local stat=
    if [[ -n ${CSW:-} && $label != *nomilter* ]]; then
        perf stat -x, -e "${STAT_EVENTS:-context-switches,raw_syscalls:sys_enter}" -p "$pid" -o "$W/csw.txt" 2>>"$LOG" &
        stat=$!
    fi
    t0=$(lc_ticks "$pid")
    s0=$(sys_ticks "$pid")
    p0=$(pf_ticks)
    c0=$(cpu_ticks)
    out=$("$PY" "$HERE/accept-rate/send.py" --port "$port" --sender "$MEMBER" --rcpt "$LIST" \
        --concurrency "$CONCURRENCY" --per-session "$PER_SESSION" "$@" 2>"$W/send.err") ||
        { cat "$W/send.err" >&2; die "sender failed on $label"; }
    t1=$(lc_ticks "$pid")
    s1=$(sys_ticks "$pid")
    p1=$(pf_ticks)
    c1=$(cpu_ticks)
    if [[ -n $stat ]]; then
        kill -INT "$stat" 2>/dev/null
        wait "$stat" 2>/dev/null || true
        awk -F, -v n="$#" -v l="$label" '$1 ~ /^[0-9]/ { printf "#   %s: milter %s per message: %.1f\n", l, $3, $1 / n }' "$W/csw.txt"
        awk -v a="$s0" -v b="$s1" -v hz="$CLK_TCK" -v n="$#" -v l="$label" 'BEGIN { printf "#   %s: milter system CPU ms per message: %.2f\n", l, (b - a) * 1000 / hz / n }'
    fi
    read -r ACC REF SECS PY_S <<<"$out"
    LC_MS=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$#" 'BEGIN { printf "%.2f", (b - a) * 1000 / hz / n }')
    PY_MS=$(awk -v s="$PY_S" -v n="$#" 'BEGIN { printf "%.2f", s * 1000 / n }')
    PF_MS=$(awk -v a="$p0" -v b="$p1" -v hz="$CLK_TCK" -v n="$#" 'BEGIN { printf "%.2f", (b - a) * 1000 / hz / n }')
    BUSY=$(awk -v a="$c0" -v b="$c1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[1] - x[1] + y[2] - x[2]) }')
    printf '#   %-13s %d/%d accepted, %d refused, in %s s; CPU ms/msg: milter %s, sender %s, Postfix %s; all cores %s%% busy; load %s\n' \
        "$label" "$ACC" "$#" "$REF" "$SECS" "$LC_MS" "$PY_MS" "$PF_MS" "$BUSY" "$(cut -d' ' -f1-3 /proc/loadavg)"
    [[ -s $W/send.err ]] && sed 's/^/#   /' "$W/send.err"
    return 0
}
must_accept_all() { # LABEL TOTAL
    ((ACC == $2)) || {
        tail -n 20 "$W/log/listcrypt.log" >&2
        die "$1: only $ACC of $2 posts accepted by the milter; a rate over refusals measures nothing"
    }
}

# ---- runs --------------------------------------------------------------------------------
echo "# warm-up: $WARMUP posts on each listener (posts not used again)"
send warm-nomilter "$P_PLAIN" "${WARM_POSTS[@]}"
send warm-noop "$P_NOOP" "${WARM_POSTS[@]}"
send warm-rewrite "$P_RW" "${WARM_POSTS[@]}"
send warm-inbound "$P_MILTER" "${WARM_POSTS[@]}"
must_accept_all warm-inbound "$WARMUP"
if [[ -n ${BASELINE:-} ]]; then
    send warm-baseline "$P_B" "${WARM_POSTS[@]}"
    must_accept_all warm-baseline "$WARMUP"
fi
drain

RESULTS=()
run_one() { # ROUND LABEL PORT: round ROUND's N posts (posts/run slice ROUND) to one listener
    local round=$1
    shift
    local before after state=$W/state
    [[ $1 == baseline ]] && state=$W/state-baseline
    before=$(replay_rows "$state")
    local perf=
    if [[ $1 == inbound && $round == 0 && -n ${PERF_OUT:-} ]]; then
        perf record -q -F "${PERF_FREQ:-499}" ${PERF_ARGS:--g} -p "$LC_PID" -o "$W/perf.data" 2>>"$LOG" &
        perf=$!
    fi
    send "$1" "$2" "${ALL[@]:round*N:N}"
    if [[ -n $perf ]]; then
        kill -INT "$perf" 2>/dev/null
        wait "$perf" 2>/dev/null || true
        perf report -i "$W/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | head -n 400 >"$PERF_OUT" || true
    fi
    drain
    after=$(replay_rows "$state")
    RESULTS+=("$round $1 $ACC $SECS $LC_MS $PY_MS $BUSY $PF_MS")
    if [[ $1 == inbound || $1 == baseline ]]; then
        must_accept_all "$1" "$N"
        if [[ $before != "?" && $after != "?" ]]; then
            (((after - before) == N)) || die "inbound: replay record grew by $((after - before)), not $N: posts were not all new"
            echo "#   replay record: +$((after - before)) new signatures (every post processed as new)"
        fi
    fi
}
EV0=$(milter_events)
for ((r = 0; r < ROUNDS; r++)); do
    echo "# round $((r + 1)) of $ROUNDS"
    run_one "$r" nomilter "$P_PLAIN"
    run_one "$r" noop "$P_NOOP"
    run_one "$r" rewrite "$P_RW"
    run_one "$r" inbound "$P_MILTER"
    [[ -n ${BASELINE:-} ]] && run_one "$r" baseline "$P_B"
done
EV1=$(milter_events)
((EV1 == EV0)) || { grep -E 'milter-|milter.*(not responding|failed|timeout)' "$W/postfix/log/maillog" | tail -n 5 >&2; die "Postfix logged $((EV1 - EV0)) milter reject/discard/hold/failure events during the runs"; }
for f in "$W"/log/listcrypt*.log; do
    if grep -qiE ' (ERROR|WARN) ' "$f"; then
        echo "# $(basename "$f" .log) logged warnings:"
        grep -iE ' (ERROR|WARN) ' "$f" | tail -n 5 | sed 's/^/#   /'
    fi
done

# ---- table -------------------------------------------------------------------------------
echo
echo "listcrypt $BIN_VERSION ($BIN_INFO; repo HEAD $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')), Postfix $(postconf -d -h mail_version), nproc $(nproc)"
[[ -n ${BASELINE:-} ]] && echo "baseline: BASELINE=$BASELINE ($BIN_INFO_BASE)"
echo "N=$N posts x ~${SIZE} B (body $BODY_BYTES B, gpg sign+encrypt -z 0, RFC 3156), concurrency $CONCURRENCY, $PER_SESSION msg/session, milter over a unix socket, delivery discard:"
printf '%s\n' "${RESULTS[@]}" | awk -v n="$N" -v rounds="$ROUNDS" '
    { r = $1; l = $2; seen[l] = 1; acc[l] += $3; sec[l] += $4; cpu[l] += $5; pcpu[l] += $6; busy[l] += $7; pf[l] += $8
      rate[r, l] = $3 / $4; cpur[r, l] = $5 }
    # median and range of EXPR over the rounds, as "0.85x (0.80-0.90)"
    function spread(a, b, cpu_ratio,    i, j, k, v, t, x) {
        k = 0
        for (i = 0; i < rounds; i++) {
            if (cpu_ratio) { if (cpur[i, b] == 0) continue; x = cpur[i, a] / cpur[i, b] }
            else x = rate[i, a] / rate[i, b]
            v[++k] = x
        }
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return sprintf("%.2fx (%.2f-%.2f)", (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2, v[1], v[k])
    }
    END {
        printf "%-10s %10s %8s %8s  %-35s %s\n", "listener", "accepted", "seconds", "msgs/s", "CPU ms/msg milter/sender/Postfix", "cores busy"
        split("nomilter noop rewrite inbound baseline", order, " ")
        for (i = 1; i <= 5; i++) {
            l = order[i]
            if (!(l in seen)) continue
            printf "%-10s %10s %8.2f %8.1f  %13.2f / %5.2f / %-11.2f %9.0f%%\n", l, acc[l] "/" n * rounds, sec[l], acc[l] / sec[l], \
                cpu[l] / rounds, pcpu[l] / rounds, pf[l] / rounds, busy[l] / rounds
        }
        printf "ratios: median of %d round(s) (lowest-highest), each round its listeners one after the other on the same posts:\n", rounds
        printf "  inbound/nomilter %s  noop/nomilter %s  inbound/noop %s\n", spread("inbound", "nomilter"), spread("noop", "nomilter"), spread("inbound", "noop")
        printf "  rewrite/noop %s  rewrite/nomilter %s (the floor of rewriting posts through the milter)\n", spread("rewrite", "noop"), spread("rewrite", "nomilter")
        printf "  inbound/rewrite %s (what listcrypt adds: OpenPGP, policy, the replay record)\n", spread("inbound", "rewrite")
        if ("baseline" in seen)
            printf "  baseline/inbound: %s the rate, %s the milter CPU per message\n", spread("baseline", "inbound"), spread("baseline", "inbound", 1)
    }'

#!/usr/bin/env bash
# Peak RSS of `listcrypt serve` while SESSIONS concurrent posts of BODY_MIB MiB each are held at
# once (issue 10: "Peak RSS for 50 concurrent 10 MiB posts before and after"), for two binaries.
#
# Each run gets its own throwaway site (mktemp: config with unix sockets, one list made with
# `listcrypt list create`, log to stderr) and its own daemon. inflight-rss/client.py opens
# SESSIONS milter connections to the inbound socket and sends on each MAIL from an outsider,
# RCPT to the list's posting address, one header and a plaintext body in 65535-byte chunks,
# all sessions at once; no EOM is sent until every body is in (or was refused during it), then
# EOM on all. The body is plaintext: listcrypt holds the whole body before it decides at end of
# message, so its refusal there still costs the full buffering. Peak RSS is VmHWM from
# /proc/PID/status after the last reply. Runs alternate OLD, NEW, OLD, NEW... (PAIRS pairs) so
# drift on a shared machine hits both; the ratio new/old is printed per pair.
#
# Usage: contrib/bench/inflight-rss.sh OLD_BINARY NEW_BINARY
# Environment: SESSIONS (default 50), BODY_MIB (default 10), PAIRS (default 2), KEEP=1 (keep
#   the work directories). Needs: bash >= 4, python3. Nothing but unix sockets is used.
set -euo pipefail

SESSIONS=${SESSIONS:-50}
BODY_MIB=${BODY_MIB:-10}
PAIRS=${PAIRS:-2}
LIST=enc@lists.example.test
SENDER=outsider@example.net
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PY:-python3}

die() { echo "inflight-rss: $*" >&2; exit 1; }
(($# == 2)) || die "usage: $0 OLD_BINARY NEW_BINARY"
OLD=$(realpath "$1")
NEW=$(realpath "$2")
[[ -x $OLD && -x $NEW ]] || die "both binaries must be executable"
command -v "$PY" >/dev/null || die "$PY not found"

LC_PID=
W=
stop_pid() { # PID: TERM, wait up to 10 s, KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    if [[ -n $LC_PID ]]; then
        stop_pid "$LC_PID"
        wait "$LC_PID" 2>/dev/null
    fi
    [[ -n $W && ${KEEP:-0} != 1 ]] && rm -rf "$W"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# run LABEL BINARY: one site, one daemon, one burst; sets PEAK_KIB.
run() {
    local label=$1 bin=$2 i base out t0 t1
    W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-inflight-rss.XXXXXX")
    mkdir -p "$W/lists.d" "$W/keyrings" "$W/state" "$W/run"
    # A private copy: a build elsewhere during the run cannot swap the binary under us.
    cp "$bin" "$W/listcrypt"
    cat >"$W/listcrypt.toml" <<EOF
inbound_socket = "unix:$W/run/inbound.sock"
outbound_socket = "unix:$W/run/outbound.sock"
policy_dir = "$W/lists.d"
keyring_dir = "$W/keyrings"
state_dir = "$W/state"
log = "stderr"
log_level = "info"
EOF
    "$W/listcrypt" -c "$W/listcrypt.toml" list create "$LIST" >"$W/setup.log" 2>&1 \
        || { cat "$W/setup.log" >&2; die "$label: list create failed"; }
    "$W/listcrypt" -c "$W/listcrypt.toml" serve 2>"$W/serve.log" &
    LC_PID=$!
    for ((i = 0; i < 200; i++)); do
        [[ -S $W/run/inbound.sock ]] && break
        kill -0 "$LC_PID" 2>/dev/null || { cat "$W/serve.log" >&2; die "$label: serve exited"; }
        sleep 0.05
    done
    [[ -S $W/run/inbound.sock ]] || die "$label: no inbound socket in 10 s"
    base=$(status_kib "$LC_PID" VmHWM)
    t0=$(date +%s.%N)
    out=$("$PY" "$HERE/inflight-rss/client.py" "$W/run/inbound.sock" "$SESSIONS" \
        $((BODY_MIB * 1048576)) "$SENDER" "$LIST") || die "$label: client failed"
    t1=$(date +%s.%N)
    kill -0 "$LC_PID" 2>/dev/null || { tail -n 20 "$W/serve.log" >&2; die "$label: serve died"; }
    PEAK_KIB=$(status_kib "$LC_PID" VmHWM)
    printf '%-4s %s  peak RSS %s MiB (at start %s MiB), %.1f s\n' "$label" \
        "$(sha256sum "$W/listcrypt" | cut -c1-12)" "$(mib "$PEAK_KIB")" "$(mib "$base")" \
        "$(echo "$t1 - $t0" | bc -l)"
    echo "$out" | awk -F'\t' '{printf "       %3d x %s\n", $2, $1}'
    stop_pid "$LC_PID"
    wait "$LC_PID" 2>/dev/null || true
    LC_PID=
    [[ ${KEEP:-0} == 1 ]] && echo "       kept $W" || rm -rf "$W"
    W=
}

echo "# $SESSIONS concurrent sessions x $BODY_MIB MiB plaintext body to $LIST, all bodies before any EOM"
echo "# old = $OLD"
echo "# new = $NEW"
declare -a ratios=()
for ((p = 1; p <= PAIRS; p++)); do
    run old "$OLD"
    old_kib=$PEAK_KIB
    run new "$NEW"
    ratios+=("pair $p: new/old peak RSS = $(awk -v n="$PEAK_KIB" -v o="$old_kib" 'BEGIN {printf "%.3f", n / o}')")
done
printf '%s\n' "${ratios[@]}"

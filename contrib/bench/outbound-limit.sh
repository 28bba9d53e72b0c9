#!/usr/bin/env bash
# Outbound against the X25519 limit, in one run: the milter bench (benches/milter.rs: a 100 KiB
# post through the milter protocol on a unix socket, batch_size 1000 = one batch) of this
# build and, optionally, of an older one, beside one `gpg --throw-keyids -s -e` process to the
# same keys, and the machine's raw X25519 rate (`openssl speed`), measured before and after.
# Also gpg to one member (the cost of gpg once per member is 100 such runs at 100 members), and
# the floor of one RCPT round trip on this machine (examples/milter_floor.rs): what 100 and
# 1000 recipients cost any milter before any work, beside the budgets of the goals.
#
#   2-core X25519 limit for n members = n PKESKs x 2 operations / (2 cores x ops/s per core)
#
# Usage: contrib/bench/outbound-limit.sh NEW_BENCH [OLD_BENCH]
#   NEW_BENCH, OLD_BENCH: milter bench executables, as printed by
#   `cargo bench --bench milter --no-run` (build OLD_BENCH from the older tree; its CPU column
#   shows when its benches/milter.rs prints CPU, as this one does).
# Environment: RUNS (timed gpg runs per size after one warm-up, default 5), KEEP=1 keeps the
#   work directory, FLOOR (default target/release/examples/milter_floor: the round-trip floor,
#   examples/milter_floor.rs; skipped if missing), FLOOR_SESSIONS (default 50). Both benches
#   run with their default budget (3 s per case): an older bench takes LISTCRYPT_BENCH_SECS
#   for a configuration key and stops.
# Needs: bash >= 5, gpg (GnuPG 2.2+), openssl.
set -euo pipefail

NEW=${1:?usage: outbound-limit.sh NEW_BENCH [OLD_BENCH]}
OLD=${2:-}
RUNS=${RUNS:-5}
FLOOR=${FLOOR:-target/release/examples/milter_floor}
FLOOR_SESSIONS=${FLOOR_SESSIONS:-50}
unset LISTCRYPT_BENCH_SECS
die() { echo "outbound-limit: $*" >&2; exit 1; }
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "needs bash 5 (EPOCHREALTIME)"
command -v gpg >/dev/null || die "gpg not found"
command -v openssl >/dev/null || die "openssl not found"

W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-outbound-limit.XXXXXX")
export GNUPGHOME=$W/gnupg
FLOOR_PID=
cleanup() {
    [[ -d $GNUPGHOME ]] && gpgconf --kill all >/dev/null 2>&1 || true
    # The round-trip floor's server, if a failure stopped the script while it ran.
    [[ -n $FLOOR_PID ]] && kill "$FLOOR_PID" 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "# kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -m 700 "$GNUPGHOME"
mkdir "$W/certs"

# One core's X25519 derivations per second (OpenSSL 3 calls it ecdhx25519).
x25519_rate() {
    openssl speed -seconds 3 ecdhx25519 2>/dev/null | awk '/X25519/ { r = $NF } END { print r }'
}

echo "# $(nproc) cores; $(openssl version)"
RATE1=$(x25519_rate)
echo "# X25519 before: $RATE1 op/s per core"

echo "# new build: $NEW"
LISTCRYPT_BENCH_EXPORT=$W/certs "$NEW" --bench | tee "$W/new.txt"
if [[ -n $OLD ]]; then
    echo "# old build: $OLD"
    "$OLD" --bench | tee "$W/old.txt"
fi

# gpg, one process per message, on the members the bench generated.
gpgb() { gpg --batch --no-tty --pinentry-mode loopback --passphrase '' "$@"; }
cat "$W"/certs/m*.pgp | gpgb --import 2>/dev/null
gpgb --quick-gen-key "gpg-list <gpg-list@example.net>" ed25519 sign never 2>/dev/null
# Member fingerprints by address (primary keys), so gpg looks nothing up by user ID.
declare -A FPR
while IFS=' ' read -r addr fpr; do FPR[$addr]=$fpr; done < <(
    gpgb --with-colons --list-keys 2>/dev/null | awk -F: '
        $1 == "pub" { want = 1; next }
        $1 == "fpr" && want { fpr = $10; want = 0; next }
        $1 == "uid" { if (match($10, /<m[0-9]+@example\.net>/)) print substr($10, RSTART + 1, RLENGTH - 2), fpr }')
# The bench's post: its header fields and 100 KiB of the same line.
{
    printf 'From: Alice <alice@example.net>\r\nTo: enc@lists.example.test\r\nSubject: [Enc] benchmark\r\n'
    printf 'Message-ID: <bench@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
    line='The quick brown fox jumps over the lazy dog, 0123456789 abcdefghij.'
    for ((i = 0; i < 102400 / 70 + 1; i++)); do printf '%s\r\n' "$line"; done
} >"$W/post.eml"
gpg_ms() { # N: median wall time of RUNS runs, in ms
    local n=$1 r=() i t0 t
    for ((i = 0; i < n; i++)); do r+=(-r "${FPR[m$i@example.net]:?no key for m$i}"); done
    for ((i = 0; i <= RUNS; i++)); do
        t0=$EPOCHREALTIME
        gpgb --yes --trust-model always --throw-keyids -z 0 -a -s -e -u gpg-list@example.net \
            "${r[@]}" -o "$W/gpg.asc" "$W/post.eml" 2>/dev/null
        t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", (b - a) * 1e3 }')
        ((i == 0)) || echo "$t"
    done | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
declare -A GPG
for n in 1 10 100 1000; do GPG[$n]=$(gpg_ms "$n"); done

# The floor of one RCPT round trip (examples/milter_floor.rs: blocking std I/O on both sides,
# a milter that answers Continue at once): what the envelope costs any milter here.
FLOOR_US=
if [[ -x $FLOOR ]]; then
    "$FLOOR" serve "$W/floor.sock" &
    FLOOR_PID=$!
    for ((i = 0; i < 50; i++)); do [[ -S $W/floor.sock ]] && break; sleep 0.1; done
    FLOOR_US=$("$FLOOR" client "$W/floor.sock" 100 "$FLOOR_SESSIONS")
    kill "$FLOOR_PID" && wait "$FLOOR_PID" 2>/dev/null || true
    FLOOR_PID=
else
    echo "# no $FLOOR: build it with cargo build --release --example milter_floor" >&2
fi

RATE2=$(x25519_rate)
echo "# X25519 after: $RATE2 op/s per core"

# The bench's median (and CPU) for batch_size 1000 and N members.
pick() { awk -v n="$2" -v f="$3" '$1 == "batch_size" && $2 == 1000 && $3 == n {
    for (i = 1; i <= NF; i++) if ($i == f) { print $(i + 1); exit } }' "$1"; }
echo
echo "| members | old daemon | new daemon | new/old | CPU/msg old | CPU/msg new | gpg one process | new/gpg | 2-core X25519 limit | new/limit |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in 10 100 1000; do
    new=$(pick "$W/new.txt" "$n" median) cpu=$(pick "$W/new.txt" "$n" cpu)
    old="" ocpu=""
    if [[ -n $OLD ]]; then old=$(pick "$W/old.txt" "$n" median) ocpu=$(pick "$W/old.txt" "$n" cpu); fi
    awk -v n="$n" -v old="$old" -v new="$new" -v cpu="$cpu" -v ocpu="$ocpu" -v gpg="${GPG[$n]}" \
        -v r1="$RATE1" -v r2="$RATE2" 'BEGIN {
        rate = (r1 + r2) / 2; limit = n * 2 / (2 * rate) * 1e3
        printf "| %d | %s | %.2f ms | %s | %s | %s | %.1f ms | %.2fx | %.2f ms | %.2fx |\n", n,
            old == "" ? "-" : sprintf("%.2f ms", old), new,
            old == "" ? "-" : sprintf("%.2fx", new / old), ocpu == "" ? "-" : ocpu " ms",
            cpu == "" ? "-" : cpu " ms", gpg, new / gpg, limit, new / limit }'
done
new100=$(pick "$W/new.txt" 100 median)
awk -v one="${GPG[1]}" -v new="$new100" 'BEGIN {
    printf "\n100 members vs gpg once per member (100 x %.1f ms = %.0f ms): %.0fx faster\n", one, 100 * one, 100 * one / new }'
if [[ -n $FLOOR_US ]]; then
    awk -v us="$FLOOR_US" -v one="${GPG[1]}" -v r1="$RATE1" -v r2="$RATE2" 'BEGIN {
        rate = (r1 + r2) / 2
        printf "floor of one RCPT round trip (milter_floor, median of sessions of 100): %.1f us\n", us
        printf "  100 members: 100 RCPTs at the floor %.2f ms = %.0f%% of the 150x budget (%.2f ms)\n",
            us / 10, 100 * (us / 10) / (100 * one / 150), 100 * one / 150
        printf "  1000 members: 1000 RCPTs at the floor %.1f ms = %.2fx the 2-core X25519 limit\n",
            us, us / (1000 * 2 / (2 * rate) * 1e3) }'
fi
echo
echo "(limit from the mean of the two X25519 rates; daemon times are medians of bench runs,"
echo " MAIL to end of message; gpg: median of $RUNS runs, one process per message)"
grep -h "PKESKs made" "$W/new.txt" || true

#!/usr/bin/env bash
# listcrypt vs GnuPG, side by side, on the same keys and the same 100 KiB post.
#
#   outbound: `listcrypt process outbound` (batch_size 1000: one batch) to 100 and 10 members
#             vs one `gpg -s -e --throw-keyids` process to the same keys;
#   inbound:  `listcrypt process inbound` of a 100 KiB post signed by a member and encrypted
#             to the list key vs `gpg --decrypt` of the same ciphertext.
#
# Process-level timing: every listcrypt run includes process start-up and the keyring load
# (config, SQLite, list key, every member certificate) that the daemon pays once. The
# in-process costs are what `cargo bench --bench pipeline` prints.
#
# Usage: contrib/bench/vs-gpg.sh            (after `cargo build --release`)
# Environment: RUNS (timed runs per case, default 10; 2 warm-up runs come first),
#              MEMBERS (default 100), SMALL (default 10), LISTCRYPT (binary path),
#              KEEP=1 keeps the work directory (keys, messages, outputs) for inspection,
#              IDLE_WAIT=SECONDS waits up to that long for an idle machine before timing.
# Needs: bash >= 5, gpg (GnuPG 2.2+), gpgconf. Everything lives in a mktemp directory that is
# removed on exit (the gpg-agents started for it are stopped).
set -euo pipefail

RUNS=${RUNS:-10}
MEMBERS=${MEMBERS:-100}
SMALL=${SMALL:-10}
WARMUP=2
LIST=enc@lists.example.test
BOUNCES=enc-bounces@lists.example.test
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LISTCRYPT=${LISTCRYPT:-$REPO/target/release/listcrypt}

die() { echo "vs-gpg: $*" >&2; exit 1; }
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "needs bash 5 (EPOCHREALTIME)"
[[ -x $LISTCRYPT ]] || die "$LISTCRYPT not found: run 'cargo build --release' first"
command -v gpg >/dev/null || die "gpg not found (apt-get install gnupg)"
((SMALL <= MEMBERS)) || die "SMALL must not exceed MEMBERS"

W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-vs-gpg.XXXXXX")
MEMBER_HOME=$W/gnupg-members # members' keys (secret) + the gpg signing test key
LIST_HOME=$W/gnupg-list      # the list's secret key + members' public keys (gpg --decrypt)
cleanup() {
    local h
    for h in "$MEMBER_HOME" "$LIST_HOME"; do
        if [[ -d $h ]]; then gpgconf --homedir "$h" --kill all >/dev/null 2>&1 || true; fi
    done
    if [[ ${KEEP:-0} == 1 ]]; then echo "# kept $W (KEEP=1)"; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -m 700 "$MEMBER_HOME" "$LIST_HOME"
mkdir -p "$W/lists.d" "$W/keyrings" "$W/state" "$W/certs"

CFG=$W/listcrypt.toml
cat >"$CFG" <<EOF
inbound_socket = "unix:$W/in.sock"
outbound_socket = "unix:$W/out.sock"
policy_dir = "$W/lists.d"
keyring_dir = "$W/keyrings"
state_dir = "$W/state"
log = "stderr"
EOF

LOG=$W/setup.log
run() { "$@" >>"$LOG" 2>&1 || { cat "$LOG" >&2; die "failed: $*"; }; }
gpgm() { gpg --homedir "$MEMBER_HOME" --batch --no-tty --pinentry-mode loopback --passphrase '' "$@"; }
gpgl() { gpg --homedir "$LIST_HOME" --batch --no-tty --pinentry-mode loopback --passphrase '' "$@"; }
fpr_of() { "$1" --with-colons --list-keys "$2" 2>>"$LOG" | awk -F: '$1=="fpr"{print $10; exit}'; } # FUNC UID

# ---- keys -------------------------------------------------------------------------------
echo "# setup in $W: $MEMBERS member keys (gpg ed25519 sign + cv25519 encr), list key, bindings"
t0=$EPOCHREALTIME
run "$LISTCRYPT" -c "$CFG" list create "$LIST"
sed -i 's/^batch_size = .*/batch_size = 1000/' "$W/lists.d/$LIST.toml"
grep -q '^batch_size = 1000$' "$W/lists.d/$LIST.toml" || echo "batch_size = 1000" >>"$W/lists.d/$LIST.toml"
"$LISTCRYPT" -c "$CFG" list export-key "$LIST" >"$W/list.asc"

FPRS=()
for ((i = 0; i < MEMBERS; i++)); do
    run gpgm --quick-gen-key "m$i <m$i@example.net>" ed25519 sign never
    fpr=$(fpr_of gpgm "=m$i <m$i@example.net>")
    [[ -n $fpr ]] || die "no fingerprint for m$i"
    run gpgm --quick-add-key "$fpr" cv25519 encr never
    gpgm --armor --export "$fpr" >"$W/certs/m$i.asc"
    run "$LISTCRYPT" -c "$CFG" member add "$LIST" "m$i@example.net" "$W/certs/m$i.asc"
    FPRS+=("$fpr")
done
# The signing key for gpg's outbound run, standing in for the list key (also Ed25519).
run gpgm --quick-gen-key "gpg-list <gpg-list@example.net>" ed25519 sign never
SIGNER=$(fpr_of gpgm "=gpg-list <gpg-list@example.net>")
run gpgm --import "$W/list.asc"
LIST_FPR=$(gpgm --with-colons --show-keys "$W/list.asc" 2>>"$LOG" | awk -F: '$1=="fpr"{print $10; exit}')
# gpg's inbound side: the list's secret key and the members' public keys.
run gpgl --import "$W/keyrings/lists/$LIST/secret.pgp"
cat "$W"/certs/m*.asc | run gpgl --import
awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "# setup took %.1f s\n", b - a }'

# ---- the post ---------------------------------------------------------------------------
# 100 KiB of 72-column text, deterministic.
body() {
    awk 'BEGIN { split("list crypt milter mailman postfix openpgp sequoia member encrypted signature batch subscriber archive digest the of and a to is", w, " ");
                 x = 7; n = 0; line = "";
                 while (n < 102400) { x = (x * 1103515245 + 12345) % 2147483648; t = w[int(x / 65536) % 20 + 1];
                     if (length(line) + length(t) + 1 > 72) { print line; n += length(line) + 1; line = "" }
                     line = (line == "" ? t : line " " t) } }' >"$W/body.raw"
    head -c 102399 "$W/body.raw"
    echo
}
body >"$W/body.txt"
{
    printf 'From: m0@example.net\nTo: %s\nSubject: benchmark post\n' "$LIST"
    printf 'Date: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-ID: <bench-out@example.net>\n'
    printf 'List-Id: <enc.lists.example.test>\nMIME-Version: 1.0\n'
    printf 'Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\n'
    cat "$W/body.txt"
} >"$W/post.eml"

# Inbound: what a GnuPG member's MUA sends — the MIME entity signed by m0 and encrypted to
# the list key, in RFC 3156 multipart/encrypted.
{
    printf 'Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
    sed 's/$/\r/' "$W/body.txt"
} >"$W/inner.eml"
run gpgm --trust-model always -z 0 -u "${FPRS[0]}" -a -s -e -r "$LIST_FPR" -o "$W/inbound.asc" "$W/inner.eml"
{
    printf 'From: m0@example.net\r\nTo: %s\r\nSubject: ...\r\n' "$LIST"
    printf 'Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <bench-in@example.net>\r\n'
    printf 'MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
    printf '\tboundary="=_bench"\r\n\r\nThis is an OpenPGP/MIME encrypted message\r\n--=_bench\r\n'
    printf 'Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--=_bench\r\n'
    printf 'Content-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
    sed 's/$/\r/' "$W/inbound.asc"
    printf '\r\n--=_bench--\r\n'
} >"$W/inbound.eml"

RCPTS_BIG=() RCPTS_SMALL=() GPG_R_BIG=() GPG_R_SMALL=()
for ((i = 0; i < MEMBERS; i++)); do
    RCPTS_BIG+=(--rcpt "m$i@example.net")
    GPG_R_BIG+=(-r "${FPRS[i]}")
    if ((i < SMALL)); then
        RCPTS_SMALL+=(--rcpt "m$i@example.net")
        GPG_R_SMALL+=(-r "${FPRS[i]}")
    fi
done

# ---- the commands -----------------------------------------------------------------------
GPG_COMMON=(--batch --no-tty --pinentry-mode loopback --passphrase '' --yes --trust-model always)
lc_out_big() { "$LISTCRYPT" -c "$CFG" process outbound --list "$LIST" --from "$BOUNCES" \
    "${RCPTS_BIG[@]}" --out "$W/out-big" <"$W/post.eml" >/dev/null 2>>"$W/run.log"; }
lc_out_small() { "$LISTCRYPT" -c "$CFG" process outbound --list "$LIST" --from "$BOUNCES" \
    "${RCPTS_SMALL[@]}" --out "$W/out-small" <"$W/post.eml" >/dev/null 2>>"$W/run.log"; }
gpg_out_big() { gpg --homedir "$MEMBER_HOME" "${GPG_COMMON[@]}" --throw-keyids -z 0 -a -u "$SIGNER" \
    -s -e "${GPG_R_BIG[@]}" -o "$W/gpg-big.asc" "$W/post.eml" 2>>"$W/run.log"; }
gpg_out_small() { gpg --homedir "$MEMBER_HOME" "${GPG_COMMON[@]}" --throw-keyids -z 0 -a -u "$SIGNER" \
    -s -e "${GPG_R_SMALL[@]}" -o "$W/gpg-small.asc" "$W/post.eml" 2>>"$W/run.log"; }
lc_in() { "$LISTCRYPT" -c "$CFG" process inbound --list "$LIST" --from m0@example.net \
    <"$W/inbound.eml" >/dev/null 2>>"$W/run.log"; }
gpg_in() { gpg --homedir "$LIST_HOME" "${GPG_COMMON[@]}" -o /dev/null -d "$W/inbound.asc" 2>>"$W/run.log"; }
lc_out_one() { "$LISTCRYPT" -c "$CFG" process outbound --list "$LIST" --from "$BOUNCES" \
    --rcpt m0@example.net --out "$W/out-one" <"$W/post.eml" >/dev/null 2>>"$W/run.log"; }
gpg_out_one() { gpg --homedir "$MEMBER_HOME" "${GPG_COMMON[@]}" --throw-keyids -z 0 -a -u "$SIGNER" \
    -s -e -r "${FPRS[0]}" -o "$W/gpg-one.asc" "$W/post.eml" 2>>"$W/run.log"; }
lc_start() { "$LISTCRYPT" --version >/dev/null; }
gpg_start() { gpg --homedir "$LIST_HOME" --batch --version >/dev/null; }

echo
echo "# commands (W=$W; RCPT list and -r list elided after the first two):"
echo "#  listcrypt out: $LISTCRYPT -c \$W/listcrypt.toml process outbound --list $LIST --from $BOUNCES ${RCPTS_BIG[*]:0:4} ... ($MEMBERS or $SMALL --rcpt) --out \$W/out < \$W/post.eml"
echo "#  gpg out:       gpg --homedir \$W/gnupg-members --batch --no-tty --pinentry-mode loopback --passphrase '' --yes --trust-model always --throw-keyids -z 0 -a -u $SIGNER -s -e ${GPG_R_BIG[*]:0:4} ... ($MEMBERS or $SMALL -r FPR) -o \$W/gpg.asc \$W/post.eml"
echo "#  listcrypt in:  $LISTCRYPT -c \$W/listcrypt.toml process inbound --list $LIST --from m0@example.net < \$W/inbound.eml"
echo "#  gpg in:        gpg --homedir \$W/gnupg-list --batch --no-tty --pinentry-mode loopback --passphrase '' --yes --trust-model always -o /dev/null -d \$W/inbound.asc"
echo "#  (inbound.asc = gpg --homedir \$W/gnupg-members -z 0 -u m0 -a -s -e -r $LIST_FPR \$W/inner.eml; inbound.eml wraps it in multipart/encrypted)"
echo "#  1 member:      the same two commands with one --rcpt / -r (listcrypt still loads all $MEMBERS member certificates)"
echo "#  start-up:      $LISTCRYPT --version  vs  gpg --homedir \$W/gnupg-list --batch --version"

# ---- sanity: every command works and produces what it should ------------------------------
lc_out_big || die "listcrypt process outbound failed: $(tail -5 "$W/run.log")"
[[ -f $W/out-big/batch-1.eml && ! -e $W/out-big/batch-2.eml ]] || die "expected exactly one batch"
[[ $(wc -l <"$W/out-big/batch-1.rcpt") -eq $MEMBERS ]] || die "batch-1.rcpt does not list $MEMBERS recipients"
sed -n '/-----BEGIN PGP MESSAGE-----/,/-----END PGP MESSAGE-----/p' "$W/out-big/batch-1.eml" | tr -d '\r' >"$W/lc-batch.asc"
gpgm --status-fd 1 -o /dev/null -d "$W/lc-batch.asc" 2>/dev/null | grep -q DECRYPTION_OKAY \
    || die "a member cannot decrypt listcrypt's batch"
gpg_out_big || die "gpg outbound failed: $(tail -5 "$W/run.log")"
out=$("$LISTCRYPT" -c "$CFG" process inbound --list "$LIST" --from m0@example.net <"$W/inbound.eml" 2>>"$W/run.log") \
    || die "listcrypt process inbound did not accept the post: $(head -1 <<<"$out")"
status=$(gpgl --trust-model always --status-fd 1 -o /dev/null -d "$W/inbound.asc" 2>/dev/null)
if ! grep -q DECRYPTION_OKAY <<<"$status" || ! grep -q GOODSIG <<<"$status"; then
    die "gpg cannot decrypt+verify the inbound post"
fi
echo "# sanity: one batch of $MEMBERS, a member decrypts it; inbound post accepted; gpg decrypts+verifies it"
printf '# sizes: post %d B, listcrypt batch %d B, gpg output %d B, inbound message %d B\n' \
    "$(wc -c <"$W/post.eml")" "$(wc -c <"$W/out-big/batch-1.eml")" "$(wc -c <"$W/gpg-big.asc")" "$(wc -c <"$W/inbound.eml")"

# ---- timing -----------------------------------------------------------------------------
# median_ms SAMPLES... (microseconds) -> median in ms
median_ms() {
    local sorted n m
    mapfile -t sorted < <(printf '%s\n' "$@" | sort -n)
    n=${#sorted[@]}
    if ((n % 2)); then m=${sorted[n / 2]}; else m=$(((sorted[n / 2 - 1] + sorted[n / 2]) / 2)); fi
    awk -v u="$m" 'BEGIN { printf "%.1f", u / 1000 }'
}
min_ms() { printf '%s\n' "$@" | sort -n | head -1 | awk '{ printf "%.1f", $1 / 1000 }'; }
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }

# time_pair LC GPG: WARMUP untimed runs of each, then RUNS timed rounds, the two commands
# interleaved so that background load hits both alike. Sets LM LMIN GM GMIN (ms).
time_pair() {
    local i t a=() b=()
    for ((i = 0; i < WARMUP; i++)); do
        "$1" || die "$1 failed: $(tail -3 "$W/run.log")"
        "$2" || die "$2 failed: $(tail -3 "$W/run.log")"
    done
    for ((i = 0; i < RUNS; i++)); do
        t=$(now_us); "$1" || die "$1 failed: $(tail -3 "$W/run.log")"; a+=($(($(now_us) - t)))
        t=$(now_us); "$2" || die "$2 failed: $(tail -3 "$W/run.log")"; b+=($(($(now_us) - t)))
    done
    LM=$(median_ms "${a[@]}") LMIN=$(min_ms "${a[@]}")
    GM=$(median_ms "${b[@]}") GMIN=$(min_ms "${b[@]}")
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
FMT='%-44s %10s %8s %10s %8s %8s\n'
row() { # label listcrypt-func gpg-func
    time_pair "$2" "$3"
    # shellcheck disable=SC2059
    printf "$FMT" "$1" "$LM" "$LMIN" "$GM" "$GMIN" "$(ratio "$LM" "$GM")"
}

# busy_pct: share of CPU time used during one second (from /proc/stat).
busy_pct() {
    local a b
    a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); t = 0;
        for (i = 2; i <= 9; i++) t += y[i] - x[i];
        idle = (y[5] + y[6]) - (x[5] + x[6]); printf "%d", t ? 100 * (t - idle) / t : 0 }'
}

echo
BUSY=$(busy_pct)
deadline=$((SECONDS + ${IDLE_WAIT:-0}))
while ((BUSY >= 15 && SECONDS < deadline)); do sleep 4; BUSY=$(busy_pct); done
((BUSY < 15)) || echo "# WARNING: the machine is busy (${BUSY}% CPU used by others just before timing): numbers are unreliable"
echo "# $(nproc) cores, ${BUSY}% busy before timing, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $RUNS timed runs after $WARMUP warm-ups, listcrypt and gpg interleaved; wall time per process in ms"
# shellcheck disable=SC2059
printf "$FMT" "case (100 KiB post)" "listcrypt" "min" "gpg" "min" "lc/gpg"
row "outbound, $MEMBERS members, one batch" lc_out_big gpg_out_big
BIG=("$LM" "$LMIN" "$GM" "$GMIN")
row "outbound, $SMALL members, one batch" lc_out_small gpg_out_small
SMALL_=("$LM" "$LMIN" "$GM" "$GMIN")
row "outbound, 1 member (fixed costs + 1 PKESK)" lc_out_one gpg_out_one
PER=()
for i in 0 1 2 3; do
    PER+=("$(awk -v a="${BIG[i]}" -v b="${SMALL_[i]}" -v n=$((MEMBERS - SMALL)) 'BEGIN { printf "%.0f", (a - b) * 1000 / n }')")
done
# shellcheck disable=SC2059
printf "$FMT" "outbound, per extra member ($SMALL->$MEMBERS), us" "${PER[0]}" "${PER[1]}" "${PER[2]}" "${PER[3]}" "$(ratio "${PER[0]}" "${PER[2]}")"
row "inbound decrypt+verify, 1 signer" lc_in gpg_in
row "bare process start-up (--version)" lc_start gpg_start
echo
echo "# Process-level numbers: every listcrypt run pays process start-up, SQLite open and the"
echo "# keyring load (list key + $MEMBERS member certificates, validated: the bulk of the"
echo "# '1 member' row), which the daemon pays once at start. gpg pays its start-up and"
echo "# gpg-agent round trips (signing, decryption) in every run. The per-extra-member row"
echo "# cancels the fixed costs (its min columns are computed from the mins). In-process costs"
echo "# (what the daemon pays per message):"
echo "#   cargo bench --bench pipeline"
BUSY=$(busy_pct)
((BUSY < 15)) || echo "# WARNING: ${BUSY}% CPU used by others right after timing: numbers may be skewed"

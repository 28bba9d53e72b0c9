#!/usr/bin/env bash
# Cold start against warm, and `process outbound` against gpg, in one run (issue 14's goals
# "first message after start <= 1.5x a warm one" and "`process outbound` at 1,000 members
# <= 0.5x gpg"), with the certificate cache kept and emptied:
#
#   daemon:  a fresh process starts the daemon (benches/milter.rs, LISTCRYPT_BENCH_COLD_START)
#            on a list of 1000 X25519 members (batch_size 1000) and times, through the milter
#            protocol on a unix socket, its first outbound message of a 100 KiB post and the
#            median of 9 more (warm); also the daemon's open (keyring load) time.
#   process: `listcrypt process outbound` to the 1000 members vs one
#            `gpg --throw-keyids -s -e` process to the same keys, interleaved.
#
# Usage: contrib/bench/cold-start.sh MILTER_BENCH [LISTCRYPT]
#   MILTER_BENCH: as printed by `cargo bench --bench milter --no-run`;
#   LISTCRYPT: the release binary (default target/release/listcrypt).
# Environment: RUNS (timed runs per case, default 5), KEEP=1 keeps the work directory.
# Needs: bash >= 5, gpg (GnuPG 2.2+).
set -euo pipefail

BENCH=${1:?usage: cold-start.sh MILTER_BENCH [LISTCRYPT]}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LISTCRYPT=${2:-$HERE/../../target/release/listcrypt}
RUNS=${RUNS:-5}
LIST=enc@lists.example.test
die() { echo "cold-start: $*" >&2; exit 1; }
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "needs bash 5 (EPOCHREALTIME)"
[[ -x $BENCH && -x $LISTCRYPT ]] || die "$BENCH or $LISTCRYPT is not an executable"
command -v gpg >/dev/null || die "gpg not found"
# With RUST_BACKTRACE set, every anyhow error (sequoia makes and drops some while parsing)
# captures a backtrace: a daemon under systemd runs without it, so the timing does too.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-cold-start.XXXXXX")
export GNUPGHOME=$W/gnupg
cleanup() {
    [[ -d $GNUPGHOME ]] && gpgconf --kill all >/dev/null 2>&1 || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "# kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -m 700 "$GNUPGHOME"
mkdir "$W/d"

echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); setup in $W"
LISTCRYPT_BENCH_COLD_START=$W/d "$BENCH" --bench >/dev/null
gpg --batch --quiet --import "$W"/d/certs/*.pgp 2>/dev/null
gpg --batch --passphrase '' --quick-gen-key "gpg-list <gpg-list@example.net>" ed25519 sign never 2>/dev/null
SIGNER=$(gpg --with-colons --list-keys gpg-list@example.net | awk -F: '$1=="fpr"{print $10; exit}')
FPRS=$(gpg --with-colons --list-keys '@example.net' | awk -F: '$1=="pub"{p=1} $1=="fpr"&&p{print $10; p=0}' | grep -v "$SIGNER")
[[ $(wc -l <<<"$FPRS") -eq 1000 ]] || die "expected 1000 member keys in gpg"
GPG_R=() RCPTS=()
for f in $FPRS; do GPG_R+=(-r "$f"); done
for ((i = 0; i < 1000; i++)); do RCPTS+=(--rcpt "m$i@example.net"); done
{
    printf 'From: m0@example.net\nTo: %s\nSubject: benchmark post\nMessage-ID: <cold@example.net>\n' "$LIST"
    printf 'MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n'
    for ((i = 0; i < 1420; i++)); do echo "The quick brown fox jumps over the lazy dog, 0123456789 abcdefghij."; done
} >"$W/post.eml"

lc_out() { "$LISTCRYPT" -c "$W/d/c.toml" process outbound --list "$LIST" \
    --from enc-bounces@lists.example.test "${RCPTS[@]}" --out "$W/out" <"$W/post.eml" >/dev/null 2>>"$W/run.log"; }
lc_out_cold() { sqlite3 "$W/d/state/state.sqlite" "DELETE FROM cert_cache" && lc_out; }
gpg_out() { gpg --batch --yes --trust-model always --throw-keyids -z 0 -a -u "$SIGNER" -s -e \
    "${GPG_R[@]}" -o "$W/gpg.asc" "$W/post.eml" 2>>"$W/run.log"; }
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }
median_ms() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END { m = NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000 }'; }
# time_pair A B: RUNS interleaved runs of each after one warm-up; sets A_MS B_MS (medians).
time_pair() {
    local i t a=() b=()
    "$1" && "$2" || die "$1 or $2 failed: $(tail -3 "$W/run.log")"
    for ((i = 0; i < RUNS; i++)); do
        t=$(now_us); "$1" || die "$1 failed"; a+=($(($(now_us) - t)))
        t=$(now_us); "$2" || die "$2 failed"; b+=($(($(now_us) - t)))
    done
    A_MS=$(median_ms "${a[@]}") B_MS=$(median_ms "${b[@]}")
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "# commands:"
echo "#   daemon:  LISTCRYPT_BENCH_COLD_START=\$W/d [LISTCRYPT_BENCH_DROP_CACHE=1] $BENCH --bench"
echo "#   process: $LISTCRYPT -c \$W/d/c.toml process outbound --list $LIST --from enc-bounces@lists.example.test --rcpt m0@example.net ... (1000) --out \$W/out < \$W/post.eml"
echo "#   gpg:     gpg --batch --yes --trust-model always --throw-keyids -z 0 -a -u $SIGNER -s -e -r FPR ... (1000) -o \$W/gpg.asc \$W/post.eml"
echo "# daemon, $RUNS fresh processes each (first = first outbound message after start):"
for cache in kept empty; do
    for ((i = 0; i < RUNS; i++)); do
        if [[ $cache == empty ]]; then
            LISTCRYPT_BENCH_COLD_START=$W/d LISTCRYPT_BENCH_DROP_CACHE=1 "$BENCH" --bench
        else
            LISTCRYPT_BENCH_COLD_START=$W/d "$BENCH" --bench
        fi
    done | tee "$W/daemon-$cache.txt"
    for key in open_ms first_ms warm_median_ms first/warm; do
        vals=$(grep -o "$key=[0-9.]*" "$W/daemon-$cache.txt" | cut -d= -f2 | sort -n)
        printf '#   cache %-5s %-15s median %s\n' "$cache" "$key" "$(awk '{a[NR]=$1} END { print NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2 }' <<<"$vals")"
    done
done

echo "# process outbound vs gpg, 1000 members, $RUNS interleaved runs, median wall ms"
echo "# (cache emptied: includes the sqlite3 DELETE before each run):"
time_pair lc_out gpg_out
echo "#   cache kept:    listcrypt $A_MS  gpg $B_MS  ratio $(ratio "$A_MS" "$B_MS")"
time_pair lc_out_cold gpg_out
echo "#   cache emptied: listcrypt $A_MS  gpg $B_MS  ratio $(ratio "$A_MS" "$B_MS")"
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

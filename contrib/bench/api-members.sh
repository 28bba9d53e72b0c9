#!/usr/bin/env bash
# Latency of the admin API's member list (GET /v1/lists/LIST/members) for a list of MEMBERS
# bound members (default 1000), as an owner's page or script would call it: a throwaway site
# with SQLite state, `listcrypt serve` with api_listen on loopback, a read token, and a Python
# client sending REQUESTS sequential GETs (default 300, after 10 warm-up requests) on one
# keep-alive connection. Prints p50, p90, p99 and max in ms, and checks that every answer
# lists all members. Timings are never asserted anywhere.
#
# Usage: contrib/bench/api-members.sh
# Environment: MEMBERS, REQUESTS, LISTCRYPT (binary; default target/release/listcrypt if built,
#   else target/debug/listcrypt: say which in any report), KEEP=1 keeps the work dir.
set -euo pipefail

MEMBERS=${MEMBERS:-1000}
REQUESTS=${REQUESTS:-300}
LIST=enc@lists.example.test
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -z ${LISTCRYPT:-} ]]; then
    LISTCRYPT=$REPO/target/release/listcrypt
    [[ -x $LISTCRYPT ]] || LISTCRYPT=$REPO/target/debug/listcrypt
fi
die() { echo "api-members: $*" >&2; exit 1; }
[[ -x $LISTCRYPT ]] || die "$LISTCRYPT missing: cargo build"
command -v gpg >/dev/null || die "gpg not found (apt-get install gnupg)"

W=$(mktemp -d "${TMPDIR:-/tmp}/listcrypt-api-members.XXXXXX")
LC_PID=
cleanup() {
    if [[ -n $LC_PID ]]; then kill -TERM "$LC_PID" 2>/dev/null || true; wait "$LC_PID" 2>/dev/null || true; fi
    gpgconf --homedir "$W/gnupg" --kill all 2>/dev/null || true
    if [[ ${KEEP:-} == 1 ]]; then echo "# kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/lists.d" "$W/gnupg" "$W/certs"
chmod 700 "$W/gnupg"
cat >"$W/listcrypt.toml" <<CONF
inbound_socket = "unix:$W/run/inbound.sock"
outbound_socket = "unix:$W/run/outbound.sock"
policy_dir = "$W/lists.d"
keyring_dir = "$W/keyrings"
state_dir = "$W/state"
log = "stderr"
log_level = "warn"
api_listen = "127.0.0.1:$PORT"
CONF
lc() { "$LISTCRYPT" -c "$W/listcrypt.toml" "$@"; }
lc list create "$LIST" >/dev/null

echo "# $MEMBERS members: generating keys (one gpg run) and binding them"
for ((i = 1; i <= MEMBERS; i++)); do
    printf 'Key-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nSubkey-Type: ecdh\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\nName-Real: m%d\nName-Email: m%d@example.net\nExpire-Date: 2y\n%%no-protection\n%%commit\n' "$i" "$i"
done >"$W/keys.batch"
gpg --homedir "$W/gnupg" --batch --quiet --gen-key "$W/keys.batch" 2>/dev/null
for ((i = 1; i <= MEMBERS; i++)); do
    gpg --homedir "$W/gnupg" --armor --export "m$i@example.net" >"$W/certs/$i.asc"
done
seq 1 "$MEMBERS" | xargs -P 2 -I{} "$LISTCRYPT" -c "$W/listcrypt.toml" member add "$LIST" "m{}@example.net" "$W/certs/{}.asc" >/dev/null
TOKEN=$(lc token create --list "$LIST" --scope read)

"$LISTCRYPT" -c "$W/listcrypt.toml" serve 2>"$W/serve.log" &
LC_PID=$!
for ((i = 0; i < 100; i++)); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done

echo "# $LISTCRYPT, $REQUESTS GETs of /v1/lists/$LIST/members"
python3 - "$PORT" "$TOKEN" "$LIST" "$MEMBERS" "$REQUESTS" <<'PY'
import http.client, json, sys, time
port, token, lst, members, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
def get():
    conn.request("GET", f"/v1/lists/{lst}/members", headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    rows = json.loads(body)
    assert len(rows) == members and all(x["state"] == "active" for x in rows), len(rows)
    return len(body)
for _ in range(10):
    size = get()
ms = []
for _ in range(n):
    t = time.perf_counter()
    get()
    ms.append((time.perf_counter() - t) * 1000)
ms.sort()
q = lambda p: ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]
print(f"members {members}  body {size} bytes  requests {n}")
print(f"p50 {q(0.5):.1f} ms  p90 {q(0.9):.1f} ms  p99 {q(0.99):.1f} ms  max {ms[-1]:.1f} ms")
PY

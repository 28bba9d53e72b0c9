#!/usr/bin/python3
"""Writes COUNT distinct PGP/MIME posts for accept-rate.sh, before any timing.

Each post: a BODY_BYTES text body with its own counter, as a MIME entity signed by the member
and encrypted to the list key by gpg (--sign --encrypt, armored, -z 0 so the ciphertext is as
large as the text), wrapped in RFC 3156 multipart/encrypted, CRLF line ends. Every post gets a
fresh signature, so no two are the same for listcrypt's replay record.

Usage: makeposts.py --home GNUPGHOME --signer FPR --recipient FPR --count N --body-bytes B
                    --sender ADDR --list ADDR --tag TEXT --out DIR
Writes DIR/post-00000.eml ... and prints the mean size in bytes.
"""
import argparse
import concurrent.futures
import os
import random
import subprocess
import sys
import time
from email.utils import formatdate

WORDS = (
    "the of and a to in is that for it as was with on be at by this had not are but from or "
    "have an they which one you were her all she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "list member post encrypted signature subscriber archive digest moderator policy key"
).split()


def body_text(n, size, tag):
    rnd = random.Random(n)
    lines = [f"Benchmark post {n} ({tag}).", ""]
    total = sum(len(x) + 2 for x in lines)
    line = ""
    while total < size:
        w = rnd.choice(WORDS)
        if len(line) + 1 + len(w) > 72:
            lines.append(line)
            total += len(line) + 2
            line = ""
        line = w if not line else line + " " + w
    text = "\r\n".join(lines) + "\r\n"
    return text[: size - 2] + "\r\n"


def make(n, a):
    inner = (
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n" + body_text(n, a.body_bytes, a.tag)
    ).encode()
    out = subprocess.run(
        ["gpg", "--homedir", a.home, "--batch", "--no-tty", "--quiet", "--trust-model", "always",
         "-z", "0", "--armor", "--local-user", a.signer, "--sign", "--encrypt",
         "--recipient", a.recipient],
        input=inner, capture_output=True, check=False)
    if out.returncode != 0 or not out.stdout:
        raise RuntimeError(f"gpg failed for post {n}: {out.stderr.decode(errors='replace')}")
    armored = out.stdout.decode().replace("\r\n", "\n").replace("\n", "\r\n")
    boundary = f"=_accept_rate_{n}_{a.tag}"
    msg = (
        f"From: alice <{a.sender}>\r\n"
        f"To: {a.list}\r\n"
        f"Subject: accept-rate post {n}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <accept-rate-{a.tag}-{n}@example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n"
        f"\tboundary=\"{boundary}\"\r\n\r\n"
        "This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"
        f"--{boundary}\r\n"
        "Content-Type: application/pgp-encrypted\r\n"
        "Content-Description: PGP/MIME version identification\r\n\r\n"
        "Version: 1\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
        "Content-Description: OpenPGP encrypted message\r\n"
        "Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
        + armored + ("" if armored.endswith("\r\n") else "\r\n")
        + f"\r\n--{boundary}--\r\n"
    ).encode()
    path = os.path.join(a.out, f"post-{n:05d}.eml")
    with open(path, "wb") as f:
        f.write(msg)
    return len(msg)


def main():
    p = argparse.ArgumentParser()
    for opt in ("--home", "--signer", "--recipient", "--sender", "--list", "--tag", "--out"):
        p.add_argument(opt, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--body-bytes", type=int, required=True)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        sizes = list(ex.map(lambda n: make(n, a), range(a.count)))
    print(f"{sum(sizes) / len(sizes):.0f} {time.monotonic() - t0:.1f}")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        sys.exit(f"makeposts: {e}")

#!/usr/bin/env python3
"""Concurrent milter client for contrib/bench/inflight-rss.sh.

Opens SESSIONS connections to a milter unix socket, sends each one MAIL, RCPT, one header and a
BODY_BYTES body in chunks of at most 65535 bytes, all sessions at once; only when every session
has sent its whole body (or was refused during it) does any session send EOM. Prints one line
per outcome, "code count", where code is the SMTP reply (e.g. "452 4.3.1") or the milter
action (accept, continue, discard, tempfail, reject) when no reply text was set.

Usage: client.py SOCKET SESSIONS BODY_BYTES SENDER RECIPIENT
"""
import collections
import socket
import struct
import sys
import threading

SMFIC_OPTNEG, SMFIC_CONNECT, SMFIC_HELO = b"O", b"C", b"H"
SMFIC_MAIL, SMFIC_RCPT, SMFIC_DATA = b"M", b"R", b"T"
SMFIC_HEADER, SMFIC_EOH, SMFIC_BODY, SMFIC_BODYEOB, SMFIC_QUIT = b"L", b"N", b"B", b"E", b"Q"

# Protocol flags (libmilter mfapi.h): a stage the milter negotiated away is not sent, a stage
# marked "no reply" gets none.
NO = {b"C": 0x1, b"H": 0x2, b"M": 0x4, b"R": 0x8, b"B": 0x10, b"L": 0x20, b"N": 0x40, b"T": 0x200}
NR = {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"T": 0x10000, b"N": 0x40000,
      b"B": 0x80000, b"L": 0x80}
ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF
CHUNK = 65535
STAGE = {b"C": "connect", b"H": "helo", b"M": "mail", b"R": "rcpt", b"T": "data", b"L": "header",
         b"N": "eoh", b"B": "body"}
FINAL = {b"a": "accept", b"c": "continue", b"d": "discard", b"r": "reject", b"t": "tempfail",
         b"s": "skip"}


class Refused(Exception):
    """The milter ended the transaction before EOM; args[0] is the outcome."""


class Session:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.proto = 0

    def send(self, cmd, data=b""):
        self.s.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            part = self.s.recv(n - len(buf))
            if not part:
                raise ConnectionError("milter closed the connection")
            buf += part
        return bytes(buf)

    def recv(self):
        (n,) = struct.unpack(">I", self.recv_exact(4))
        pkt = self.recv_exact(n)
        return pkt[:1], pkt[1:]

    def final_reply(self):
        """Reads past progress and modification actions to the final reply."""
        while True:
            cmd, data = self.recv()
            if cmd == b"y":
                words = data.rstrip(b"\0").decode("utf-8", "replace").split()
                if len(words) > 1 and words[1][:1].isdigit() and words[1].count(".") == 2:
                    return " ".join(words[:2])
                return words[0] if words else "y?"
            if cmd in FINAL:
                return FINAL[cmd]
            # p (progress), b (replace body), h/m/i (headers), +/-/e (envelope): keep reading.

    def step(self, cmd, data=b""):
        """Sends one command; raises Refused unless the milter lets the transaction go on."""
        if self.proto & NO.get(cmd, 0):
            return
        self.send(cmd, data)
        if self.proto & NR.get(cmd, 0):
            return
        outcome = self.final_reply()
        if outcome == "skip" and cmd == SMFIC_BODY:
            raise StopIteration
        if outcome != "continue":
            raise Refused(f"{outcome} at {STAGE[cmd]}")

    def open(self, sender, recipient):
        self.send(SMFIC_OPTNEG, struct.pack(">III", 6, ALL_ACTIONS, ALL_PROTOCOL))
        cmd, data = self.recv()
        if cmd != SMFIC_OPTNEG or len(data) < 12:
            raise ConnectionError(f"bad option negotiation reply {cmd!r}")
        _, _, self.proto = struct.unpack(">III", data[:12])
        self.step(SMFIC_CONNECT, b"localhost\0" + b"4" + struct.pack(">H", 40000) + b"127.0.0.1\0")
        self.step(SMFIC_HELO, b"localhost\0")
        self.step(SMFIC_MAIL, f"<{sender}>\0".encode())
        self.step(SMFIC_RCPT, f"<{recipient}>\0".encode())
        self.step(SMFIC_DATA)
        self.step(SMFIC_HEADER, b"Subject\0 inflight-rss\0")
        self.step(SMFIC_EOH)


def body_bytes(total):
    line = b"x" * 76 + b"\r\n"
    body = line * (total // len(line))
    return body + b"y" * (total - len(body))


def main():
    path, sessions, size, sender, recipient = sys.argv[1:6]
    sessions, size = int(sessions), int(size)
    body = body_bytes(size)
    barrier = threading.Barrier(sessions)
    outcomes = collections.Counter()
    lock = threading.Lock()

    def run():
        outcome = None
        sess = None
        try:
            sess = Session(path)
            sess.open(sender, recipient)
            try:
                for off in range(0, len(body), CHUNK):
                    sess.step(SMFIC_BODY, body[off:off + CHUNK])
            except StopIteration:
                pass
        except Refused as r:
            outcome = r.args[0]
        except (OSError, ConnectionError) as e:
            outcome = f"error:{type(e).__name__}"
        barrier.wait()  # every body is in before any EOM
        if outcome is None:
            try:
                sess.send(SMFIC_BODYEOB)
                outcome = f"{sess.final_reply()} at eom"
            except (OSError, ConnectionError) as e:
                outcome = f"error-at-eom:{type(e).__name__}"
        try:
            if sess is not None:
                sess.send(SMFIC_QUIT)
                sess.s.close()
        except OSError:
            pass
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=run) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for code, count in sorted(outcomes.items()):
        print(f"{code}\t{count}")


if __name__ == "__main__":
    main()

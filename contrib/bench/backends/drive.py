#!/usr/bin/python3
"""Milter client for contrib/bench/backends.sh: whole messages through listcrypt's milter
sockets, one transaction per message, SESSIONS at a time, timed per message.

  drive.py inbound SOCKET SESSIONS SENDER LIST DIR
      every DIR/post-*.eml from SENDER to LIST through the inbound socket;
  drive.py outbound SOCKET SESSIONS LIST_BOUNCES COUNT SINK_PORT RCPT...
      COUNT distinct plaintext list messages (as Mailman emits them) from LIST_BOUNCES to every
      RCPT through the outbound socket; the extra batches listcrypt reinjects go to an SMTP
      sink this script runs on 127.0.0.1:SINK_PORT (it answers 250 with a queue id).

Prints one line: messages, wall seconds, messages/s, median and p90 ms per message (from
the first milter command to the final reply), and the outcome counts (e.g. continue=200).
"""
import collections
import itertools
import os
import socket
import socketserver
import statistics
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "inflight-rss"))
from client import (CHUNK, SMFIC_BODY, SMFIC_BODYEOB, SMFIC_CONNECT, SMFIC_DATA,  # noqa: E402
                    SMFIC_EOH, SMFIC_HEADER, SMFIC_HELO, SMFIC_MAIL, SMFIC_OPTNEG,
                    SMFIC_QUIT, SMFIC_RCPT, ALL_ACTIONS, ALL_PROTOCOL, Refused, Session)


def split_message(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    fields = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\r\n" + line
        else:
            name, _, value = line.partition(b":")
            fields.append([name, value[1:] if value.startswith(b" ") else value])
    return fields, body


def transact(path, sender, rcpts, raw):
    """One transaction; returns (outcome, seconds)."""
    t0 = time.monotonic()
    sess = Session(path)
    try:
        sess.send(SMFIC_OPTNEG, struct.pack(">III", 6, ALL_ACTIONS, ALL_PROTOCOL))
        cmd, data = sess.recv()
        if cmd != SMFIC_OPTNEG or len(data) < 12:
            raise ConnectionError(f"bad option negotiation reply {cmd!r}")
        _, _, sess.proto = struct.unpack(">III", data[:12])
        sess.step(SMFIC_CONNECT, b"localhost\0" + b"4" + struct.pack(">H", 40000) + b"127.0.0.1\0")
        sess.step(SMFIC_HELO, b"localhost\0")
        sess.step(SMFIC_MAIL, f"<{sender}>\0".encode())
        for r in rcpts:
            sess.step(SMFIC_RCPT, f"<{r}>\0".encode())
        sess.step(SMFIC_DATA)
        fields, body = split_message(raw)
        for name, value in fields:
            sess.step(SMFIC_HEADER, name + b"\0" + value + b"\0")
        sess.step(SMFIC_EOH)
        try:
            for off in range(0, len(body), CHUNK):
                sess.step(SMFIC_BODY, body[off:off + CHUNK])
        except StopIteration:
            pass
        sess.send(SMFIC_BODYEOB)
        outcome = sess.final_reply()
    except Refused as r:
        outcome = r.args[0]
    finally:
        try:
            sess.send(SMFIC_QUIT)
            sess.s.close()
        except OSError:
            pass
    return outcome, time.monotonic() - t0


class SinkHandler(socketserver.StreamRequestHandler):
    ids = itertools.count(1)

    def handle(self):
        w = self.wfile.write
        w(b"220 bench sink ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"DATA":
                w(b"354 go ahead\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                w(b"250 2.0.0 Ok: queued as BENCH%06d\r\n" % next(self.ids))
            elif verb == b"QUIT":
                w(b"221 2.0.0 Bye\r\n")
                return
            elif verb == b"EHLO":
                w(b"250-bench\r\n250 8BITMIME\r\n")
            else:
                w(b"250 2.0.0 Ok\r\n")


def outbound_message(n, list_address):
    local = list_address.split("@")[0]
    text = "".join(f"Line {i} of list message {n}, as Mailman sends it.\r\n" for i in range(60))
    return (
        f"From: alice <alice@example.net>\r\nTo: {list_address}\r\n"
        f"Subject: bench outbound {n}\r\nMessage-ID: <bench-out-{n}-{os.getpid()}@example.net>\r\n"
        f"List-Id: <{local}.lists.example.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text
    ).encode()


def run(path, sessions, jobs):
    """jobs: (sender, rcpts, raw) triples; SESSIONS at a time."""
    results, lock, it = [], threading.Lock(), iter(jobs)

    def worker():
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                return
            r = transact(path, *job)
            with lock:
                results.append(r)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    ms = sorted(s * 1000 for _, s in results)
    outcomes = collections.Counter(o for o, _ in results)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"{len(ms)} {wall:.2f} {len(ms) / wall:.1f} {statistics.median(ms):.1f} {p90:.1f} "
          + ",".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(outcomes.items())))


def main():
    mode, path, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "inbound":
        sender, list_address, directory = sys.argv[4:7]
        posts = sorted(f for f in os.listdir(directory) if f.startswith("post-"))
        jobs = []
        for name in posts:
            with open(os.path.join(directory, name), "rb") as f:
                jobs.append((sender, [list_address], f.read()))
        run(path, sessions, jobs)
    elif mode == "outbound":
        bounces, count, port = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        rcpts = sys.argv[7:]
        list_address = bounces.replace("-bounces@", "@")
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        sink = socketserver.ThreadingTCPServer(("127.0.0.1", port), SinkHandler)
        sink.daemon_threads = True
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        jobs = [(bounces, rcpts, outbound_message(n, list_address)) for n in range(count)]
        run(path, sessions, jobs)
        sink.shutdown()
    else:
        sys.exit(f"drive.py: unknown mode {mode}")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""SMTP load for accept-rate.sh: sends the given message files to 127.0.0.1:PORT.

CONCURRENCY client threads each open an SMTP session, send up to PER_SESSION messages (one
message per transaction: MAIL FROM, one RCPT, DATA), QUIT, and reconnect until every file was
sent once. All files are read into memory before the clock starts; the clock runs from the
moment every thread is ready until the last reply. A message counts as accepted only on a
250 after DATA; anything else (a 4xx/5xx at any stage, a dropped connection) counts as refused.

Prints one line on stdout:  ACCEPTED REFUSED SECONDS SENDER_CPU_SECONDS
and the first few refusal texts on stderr.
"""
import argparse
import resource
import smtplib
import socket
import sys
import threading
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sender", required=True)
    p.add_argument("--rcpt", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--per-session", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("files", nargs="+")
    a = p.parse_args()

    messages = []
    for path in a.files:
        with open(path, "rb") as f:
            messages.append(f.read())

    lock = threading.Lock()
    state = {"next": 0, "accepted": 0, "refused": 0, "samples": []}
    ready = threading.Barrier(a.concurrency + 1)

    def take():
        with lock:
            i = state["next"]
            if i >= len(messages):
                return None
            state["next"] = i + 1
            return i

    def refuse(i, text):
        with lock:
            state["refused"] += 1
            if len(state["samples"]) < 5:
                state["samples"].append(f"post #{i}: {text}")

    def reply(code, msg):
        return f"{code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"

    def worker():
        ready.wait()
        while True:
            i = take()
            if i is None:
                return
            try:
                s = smtplib.SMTP("127.0.0.1", a.port, local_hostname="client.example.net",
                                 timeout=a.timeout)
            except (OSError, smtplib.SMTPException) as e:
                refuse(i, f"connect: {e}")
                continue
            try:
                sent = 0
                while i is not None:
                    code, msg = s.mail(a.sender)
                    if code != 250:
                        refuse(i, "MAIL: " + reply(code, msg))
                        s.rset()
                    else:
                        code, msg = s.rcpt(a.rcpt)
                        if code not in (250, 251):
                            refuse(i, "RCPT: " + reply(code, msg))
                            s.rset()
                        else:
                            try:
                                # smtplib raises only when DATA itself is refused; the reply
                                # after the message (where a milter refuses) is returned.
                                code, msg = s.data(messages[i])
                                if code == 250:
                                    with lock:
                                        state["accepted"] += 1
                                else:
                                    refuse(i, "end of data: " + reply(code, msg))
                            except smtplib.SMTPDataError as e:
                                refuse(i, "DATA: " + reply(e.smtp_code, e.smtp_error))
                    sent += 1
                    i = take() if sent < a.per_session else None
                s.quit()
            except (OSError, smtplib.SMTPException, socket.timeout) as e:
                if i is not None:
                    refuse(i, f"session: {e!r}")
                try:
                    s.close()
                except OSError:
                    pass

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    for line in state["samples"]:
        print("  refused " + line.replace("\n", " | "), file=sys.stderr)
    print(f"{state['accepted']} {state['refused']} {seconds:.3f} {cpu:.3f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A gRPC client that freezes (SIGSTOP: it answers no HTTP/2 ping) loses its connection after
limits.idle_timeout_ms, and its session slot is freed; one that is merely quiet keeps its call.

Usage: grpc_frozen_client_test.py path/to/sluice
Real processes: `sluice serve` and two `sluice sub` clients on 127.0.0.1.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

SLUICE = sys.argv[1]


def sessions(http):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    return float(re.search(r"^sluice_sessions (\S+)$", text, re.M).group(1))


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0",
               SLUICE_IDLE_TIMEOUT_MS="1000")
    serve = subprocess.Popen([SLUICE, "serve"], stdout=subprocess.PIPE, env=env, text=True)
    clients = []
    try:
        listening = json.loads(serve.stdout.readline())
        grpc_address, http = listening["grpc"], listening["http"]
        for name in ("frozen", "quiet"):
            clients.append(subprocess.Popen(
                [SLUICE, "sub", "--target", grpc_address, "--topic", "t", "--name", name],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: sessions(http) == 2, 10, "two sessions")
        frozen, quiet = clients
        frozen.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        wait_for(lambda: sessions(http) == 1, 15, "the frozen client's session to go")
        took = time.monotonic() - start
        # Gone after about the idle timeout (1 s: a ping at 0.5 s, unanswered for 0.5 s).
        assert took < 10, took
        time.sleep(1.5)  # the quiet one answers pings: it stays past the timeout
        assert sessions(http) == 1
        assert quiet.poll() is None, "the quiet client's call ended"
        print(f"frozen client's session freed {took:.2f} s after SIGSTOP; quiet client kept")
    finally:
        for c in clients:
            c.kill()
            c.wait()
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=10)


if __name__ == "__main__":
    main()

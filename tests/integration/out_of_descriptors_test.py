#!/usr/bin/env python3
"""A relay out of file descriptors does not spin: its accepts fail (EMFILE), are counted and
retried every 100 ms, the failure is told once on stderr; a client it has no descriptor for is
refused at once (503 naming the limit) rather than left waiting; and once descriptors are free
again the relay serves as before.

Usage: out_of_descriptors_test.py path/to/sluice
Real processes: `sluice serve` with a limit of 64 descriptors (RLIMIT_NOFILE), and 120 plain TCP
connections to its HTTP port from this process.
"""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

SLUICE = sys.argv[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0", SLUICE_THREADS="1")
    serve = subprocess.Popen(
        [SLUICE, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    clients = []
    try:
        http = json.loads(serve.stdout.readline())["http"]
        host, port = http.rsplit(":", 1)
        for _ in range(120):  # more than the relay has descriptors for
            c = socket.create_connection((host, int(port)))  # (queued by the kernel)
            clients.append(c)
        time.sleep(0.5)
        before = cpu_seconds(serve.pid)
        time.sleep(2.0)
        used = cpu_seconds(serve.pid) - before
        # A relay retrying accept at once spins a core: ~2 s of CPU in these 2 s.
        assert used < 0.5, f"the relay used {used:.2f} s of CPU in 2 s while out of descriptors"
        # The clients it had no descriptor for were not left waiting: each was accepted with
        # the spare descriptor and refused with a 503 naming the limit; so is a new one.
        answered = 0
        for c in clients:
            c.settimeout(0.05)
            try:
                answered += c.recv(64).startswith(b"HTTP/1.1 503")
            except OSError:
                pass
        assert answered > 0, "no client beyond the limit got an answer"
        try:
            urllib.request.urlopen(f"http://{http}/healthz", timeout=5)
            raise AssertionError("a client was served while the relay had no descriptors")
        except urllib.error.HTTPError as e:
            body = e.read().decode()
            assert e.code == 503 and "RLIMIT_NOFILE 64" in body, (e.code, body)
        for c in clients:
            c.close()
        clients = []
        deadline = time.monotonic() + 15
        text = None
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://{http}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert text is not None, "the relay did not serve again once descriptors were free"
        errors = re.search(r'^sluice_accept_errors_total\{reason="EMFILE"\} (\S+)$', text, re.M)
        assert errors and float(errors.group(1)) >= 1, "EMFILE accept errors not counted"
        print(f"out of descriptors: {used:.2f} s CPU in 2 s; {answered} refused with 503; "
              f"{float(errors.group(1)):.0f} EMFILE accepts counted; serving again")
    finally:
        for c in clients:
            c.close()
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=10)
    lines = [line for line in err.splitlines() if '"accept_error"' in line]
    assert lines and '"EMFILE"' in lines[0], err
    assert len(lines) <= 2, f"told {len(lines)} times in a few seconds: {err}"


if __name__ == "__main__":
    main()

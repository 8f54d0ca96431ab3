"""The real relay for the Python SDK's tests: `sluice serve` on 127.0.0.1, ephemeral ports, the
configuration each test gives. SLUICE_BINARY names the executable; the SDK is imported from the
source tree (python/)."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

SLUICE = os.environ.get("SLUICE_BINARY", os.path.join(HERE, "..", "..", "build", "src", "cli", "sluice"))


class Relay:
    def __init__(self, config="", http_port=0, env=None, grpc_port=0):
        self.config = config
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.env = env or {}
        self.proc = None

    def start(self):
        path = tempfile.mktemp(suffix=".toml")
        with open(path, "w") as f:
            f.write(self.config)
        env = dict(os.environ, SLUICE_GRPC_PORT=str(self.grpc_port), SLUICE_HTTP_PORT=str(self.http_port), **self.env)
        self.proc = subprocess.Popen([SLUICE, "serve", "--config", path], stdout=subprocess.PIPE,
                                     env=env, text=True)
        line = json.loads(self.proc.stdout.readline())
        assert line["event"] == "listening", line
        self.url = f"ws://{line['http']}"
        self.http = f"http://{line['http']}"
        self.grpc = line["grpc"]
        self.http_port = int(line["http"].rsplit(":", 1)[1])
        return self

    def stats(self):
        import urllib.request
        with urllib.request.urlopen(self.http + "/v1/stats", timeout=5) as r:
            return json.load(r)

    def topic(self, name):
        return next(t for t in self.stats()["topics"] if t["name"] == name)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # (a test may have stopped it)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise


@pytest.fixture
def relay_with():
    started = []

    def start(config="", **kw):
        r = Relay(config, **kw).start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

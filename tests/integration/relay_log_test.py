#!/usr/bin/python3
"""The relay's log on stderr, as an operator reads it (`sluice serve`):

- JSON lines by default: session_opened / session_closed for a publisher and a subscriber
  (kind, topic, principal, items, seconds), refused (kind, message), throttle lines;
- --log-level warn keeps the refusals and drops the session lines;
- --log-format logfmt writes the same events as key=value;
- a stage worker that fails its frames turns unhealthy: a worker_health line;
- a flood of refusals writes at most kLogBurst (20) lines per window, the rest counted;
- the listening line names the version and TLS; /metrics has process_* and sluice_build_info.

Usage: relay_log_test.py SLUICE_BINARY
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc


relay_listening = []  # each relay's "listening" line


def serve(sluice, *flags):
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0")
    relay = subprocess.Popen([sluice, "serve", *flags], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
    first = relay.stdout.readline()
    relay_listening.append(first)
    listening = json.loads(first)
    lines = []
    threading.Thread(target=lambda: lines.extend(relay.stderr), daemon=True).start()
    return relay, listening["grpc"], lines


def stop(relay):
    relay.terminate()
    relay.wait(timeout=10)
    time.sleep(0.1)  # (the reader thread takes the last lines)


def cli(sluice, *args):
    return subprocess.run([sluice, *args], capture_output=True, text=True, timeout=30)


def main():
    sluice = sys.argv[1]

    relay, target, lines = serve(sluice)
    sub = subprocess.Popen([sluice, "sub", "--server", target, "--topic", "cam", "--count", "3"],
                           stdout=subprocess.PIPE, text=True)
    assert "subscribed" in sub.stdout.readline()
    assert cli(sluice, "pub", "--server", target, "--topic", "cam", "--count", "3").returncode == 0
    assert sub.wait(timeout=10) == 0
    assert cli(sluice, "pub", "--server", target, "--topic", "bad topic", "--count", "1").returncode == 1
    # The listening line says the version and whether TLS is on; /metrics has the process's
    # series, as every Prometheus exporter names them, and the build.
    listening = json.loads(relay_listening[-1])
    assert listening["tls"] is False and listening["version"], listening
    with urllib.request.urlopen(f"http://{listening['http']}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    for series in ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                   "process_open_fds", "process_max_fds", "process_start_time_seconds",
                   "process_cpu_seconds_total"):
        assert values.get(series, 0) > 0, (series, values.get(series))
    assert values["process_open_fds"] <= values["process_max_fds"]
    assert abs(values["process_start_time_seconds"] - time.time()) < 600
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert values.get('sluice_build_info{version="%s"}' % listening["version"]) == 1, \
        [k for k in values if k.startswith("sluice_build")]
    # The Grafana dashboard shipped (deploy/grafana) queries only series the relay exports.
    exported = {k.split("{")[0] for k in values}
    dashboard = json.load(open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy",
                                            "grafana", "sluice-relay.json")))
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b((?:sluice|process)_[a-z_]+)\b", target["expr"]))
    assert queried and queried <= exported, sorted(queried - exported)
    time.sleep(0.3)
    stop(relay)
    events = [json.loads(l) for l in lines]
    by = lambda name, **kw: [e for e in events if e["event"] == name
                             and all(e.get(k) == v for k, v in kw.items())]
    opened = by("session_opened", kind="publisher", topic="cam")
    closed = by("session_closed", kind="publisher", topic="cam")
    assert len(opened) == 1 and len(closed) == 1, events
    assert closed[0]["items"] == 3 and closed[0]["principal"] == "anonymous" and closed[0]["seconds"] >= 0
    assert closed[0]["level"] == "info" and closed[0]["time"].endswith("Z")
    sub_closed = by("session_closed", kind="subscriber", topic="cam")
    assert len(by("session_opened", kind="subscriber")) == 1 and len(sub_closed) == 1, events
    assert sub_closed[0]["items"] == 3 and sub_closed[0]["lost"] == 0
    refused = by("refused", kind="bad_request")
    assert len(refused) == 1 and "bad topic" in refused[0]["message"] and refused[0]["level"] == "warn"

    # A stage worker that fails every frame turns unhealthy: one worker_health line (warn).
    config = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sluice-log-{os.getpid()}.toml")
    with open(config, "w") as f:
        f.write('[[topic]]\nname = "frames"\nstage = true\n')
    relay, target, lines = serve(sluice, "--config", config)
    http_port = None
    worker = None
    try:
        http_port = json.loads(relay_listening[-1])["http"].rsplit(":", 1)[1]
        worker = subprocess.Popen([sluice, "worker", "--port", http_port, "--topic", "frames",
                                   "--name", "broken", "--width", "8", "--height", "4"],
                                  stdout=subprocess.PIPE, text=True)
        assert "joined" in worker.stdout.readline()
        # frames of 7 bytes where the model wants 8 x 4 x 3: each is answered with an error
        cli(sluice, "pub", "--server", target, "--topic", "frames", "--count", "10", "--size", "7",
            "--rate", "20")  # (within the stage's frame rate: none refused by its gate)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("worker_health" in l for l in lines):
            time.sleep(0.05)
    finally:
        if worker:
            worker.terminate()
            worker.wait(timeout=10)
        stop(relay)
        os.unlink(config)
    health = [json.loads(l) for l in lines if '"worker_health"' in l]
    assert health and health[0]["worker"] == "broken" and health[0]["to"] == "unhealthy", lines
    assert health[0]["level"] == "warn" and health[0]["topic"] == "frames"

    relay, target, lines = serve(sluice, "--log-level", "warn", "--log-format", "logfmt")
    assert cli(sluice, "pub", "--server", target, "--topic", "cam", "--count", "1").returncode == 0
    channel = grpc.insecure_channel(target)
    publish = channel.stream_stream("/sluice.v1.Relay/Publish", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
    bad = b"\x0a\x0b\x0a\x09bad topic"  # PublishRequest{item: {topic: "bad topic"}}
    start = time.monotonic()
    for _ in range(100):  # a flood of refusals, well within one window
        try:
            list(publish(iter([bad]), timeout=5))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert time.monotonic() - start < 8
    stop(relay)
    assert not any("session_" in l for l in lines), lines[:5]
    refused = [l for l in lines if "event=refused" in l]
    assert 1 <= len(refused) <= 20, len(refused)
    assert refused[0].startswith("time=") and " level=warn " in refused[0]
    assert 'message="topic \\"bad topic\\"' in refused[0], refused[0]
    print(f"log ok: {len(events)} JSON lines; {len(refused)} of 100 refusals logged in one window")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Hostile clients beside a healthy pair, on both ports, for SLUICE_SOAK_SECONDS (make soak: 600;
make test: 15).

Usage: hostile_soak.py SLUICE_BINARY PROTO_DIR PROTOC [--tls MAKE_TEST_CERTS]

With --tls both ports speak TLS (certificates made by scripts/make-test-certs.sh): the healthy
pair and the hostile clients above go through TLS, beside TLS attackers on both ports —
handshakes that stall (nothing sent, or half a ClientHello), records that declare more than
TLS allows, plaintext to a TLS port, and renegotiation attempts (`openssl s_client`'s "R").
Every stalled handshake must be closed by the relay at limits.handshake_timeout_ms.

A real `sluice serve` on 127.0.0.1 with small budgets. Beside a healthy gRPC publisher and
subscriber on a lossless topic, hostile clients (seeded, random) send on both ports: garbage
bytes, half requests, huge headers, WebSocket frames that are short, oversized (a header alone),
text that is no JSON, names with invalid UTF-8, subscribers that never read, gRPC requests that
are not protobuf or not UTF-8, calls cancelled mid-stream, publishes to ever new topics.

It checks the promise under attack:
- the healthy subscriber receives every item the healthy publisher had acknowledged, in order,
  none twice (lossless topic);
- the relay's RSS stays within its configured budgets plus a stated constant
  (RSS_CONSTANT_MIB) over its idle baseline;
- once the hostile clients are gone, its file descriptors return to the baseline and its
  sessions to the healthy pair's two;
- /metrics stays parseable throughout (valid UTF-8, parsed by prometheus_client's parser, every
  sample line "name{labels} value"), with hostile names on both transports.
"""
import json
import os
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import relay_pb  # noqa: E402  (tests/pylib)
from prometheus_client.parser import text_string_to_metric_families

SECONDS = float(os.environ.get("SLUICE_SOAK_SECONDS", "15"))
SEED = int(os.environ.get("SLUICE_SOAK_SEED", "7"))
FRAME_MIB = 1
QUEUE_MIB = 8
MAX_TOPICS = 256
# What the relay may hold beyond its idle baseline: the healthy topic's budget, the frame
# pool's spare blocks (64 MiB at most), and a constant for sockets, sessions, topics' rings
# and the allocator's slack.
RSS_CONSTANT_MIB = 96
RSS_BOUND_MIB = QUEUE_MIB + 64 + RSS_CONSTANT_MIB
GRPC_OTHER_FDS = 8
HANDSHAKE_TIMEOUT_S = 1.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS")).split()[1])


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid):
    """(sockets, other descriptors) the process holds."""
    sockets = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            sockets += 1
        else:
            other += 1
    return sockets, other


# With --tls: the context the clients trust the relay's CA with (None: plaintext).
TLS = None


def connect(host, port, timeout=5, tls=True):
    """A client's socket to the relay: through TLS when the relay speaks it (and `tls`)."""
    s = socket.create_connection((host, int(port)), timeout=timeout)
    return TLS.wrap_socket(s, server_hostname=host) if TLS and tls else s


def get(http, path):
    scheme = "https" if TLS else "http"
    return urllib.request.urlopen(f"{scheme}://{http}{path}", timeout=10, context=TLS).read()


def check_metrics(http):
    text = get(http, "/metrics").decode("utf-8")  # raises on invalid UTF-8
    # The Prometheus text format as Prometheus's own Python client parses it (raises if not).
    for family in text_string_to_metric_families(text):
        for _ in family.samples:
            pass
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert sample.match(line), f"unparseable /metrics line: {line[:200]!r}"
    return text


def metric(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


# --- WebSocket by hand: hostile clients need frames no library will send ---------------------

def ws_open(http, path, rng):
    host, port = http.rsplit(":", 1)
    s = connect(host, port)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head.split(b"\r\n", 1)[0]


def ws_frame(opcode, payload, declared=None):
    n = len(payload) if declared is None else declared
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def hostile_ws(http, rng):
    kind = rng.randrange(7)
    topic = f"h{rng.randrange(1000)}"
    try:
        if kind == 0:  # a publisher with frames too short, text that is no JSON, then garbage
            s, _ = ws_open(http, f"/v1/ws/publish/{topic}", rng)
            s.sendall(ws_frame(2, b"short") + ws_frame(1, b"not json {") +
                      bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        elif kind == 1:  # a header alone declaring more than the frame limit
            s, _ = ws_open(http, f"/v1/ws/publish/{topic}", rng)
            s.sendall(ws_frame(2, b"", declared=(FRAME_MIB << 20) + rng.randrange(1, 1 << 20))[:14])
        elif kind == 2:  # a subscriber with a name of invalid UTF-8, quotes, a backslash and a
            # newline, that never reads
            s, _ = ws_open(http, f"/v1/ws/subscribe/healthy?name=%FF%FE%22%5C%0A{rng.randrange(99)}",
                           rng)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        elif kind == 3:  # a publisher of a few good frames to a new topic
            s, _ = ws_open(http, f"/v1/ws/publish/{topic}", rng)
            for i in range(rng.randrange(1, 20)):
                s.sendall(ws_frame(2, struct.pack("<Qq", i, 0) + os.urandom(rng.randrange(2048))))
        elif kind == 4:  # a worker for a topic without a stage, a bad upgrade
            s, _ = ws_open(http, f"/v1/ws/work/{topic}?concurrency=0", rng)
        elif kind == 5:  # an upgrade to nowhere, with a path full of escapes
            s, _ = ws_open(http, "/v1/ws/" + "%" * rng.randrange(1, 300), rng)
        else:  # half an upgrade, left hanging (the handshake timeout closes it)
            host, port = http.rsplit(":", 1)
            s = connect(host, port)
            s.sendall(b"GET /v1/ws/subscribe/x HTTP/1.1\r\nHost: y\r\n")
        time.sleep(rng.random() * 0.5)
        s.close()
    except OSError:
        pass  # the relay closed it first: fine


def read_answer_and_close(s):
    """Reads what the relay answers, if anything within 2 s, and closes."""
    s.settimeout(2)
    try:
        s.recv(4096)
    except OSError:
        pass
    s.close()


def hostile_http(http, grpc_target, rng):
    host, port = (http if rng.random() < 0.7 else grpc_target).rsplit(":", 1)
    try:
        s = connect(host, port, tls=rng.random() < 0.8)  # (some plaintext to a TLS port)
        kind = rng.randrange(4)
        if kind == 0:
            s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))))
        elif kind == 1:
            s.sendall(b"GET /" + b"a" * rng.randrange(8000, 20000) + b" HTTP/1.1\r\n\r\n")
        elif kind == 2:
            s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 10000 + b"\r\n\r\n")
        else:
            s.sendall(b"POST /v1/stats HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nabc")
        read_answer_and_close(s)
    except OSError:
        pass


def hostile_grpc(channel, pb, rng):
    raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    kind = rng.randrange(5)
    try:
        if kind == 0:  # not protobuf
            list(channel.stream_stream("/sluice.v1.Relay/Publish", **raw)(
                iter([os.urandom(rng.randrange(1, 512))]), timeout=5))
        elif kind == 1:  # a topic that is not UTF-8
            list(channel.unary_stream("/sluice.v1.Relay/Subscribe", **raw)(
                b"\x0a\x02\xff\xfe", timeout=5))
        elif kind == 2:  # a subscription cancelled mid-stream
            sub = channel.unary_stream(
                "/sluice.v1.Relay/Subscribe",
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=pb.SubscribeEvent.FromString)(
                    pb.SubscribeRequest(topic="healthy", name=f'c"\\\n{chr(rng.randrange(0x20, 0xD800))}'),
                    timeout=5)
            sub.initial_metadata()
            time.sleep(rng.random() * 0.2)
            sub.cancel()
        elif kind == 3:  # items to ever new topics (bounded by max_topics, removed when idle)
            pub = channel.stream_stream(
                "/sluice.v1.Relay/Publish",
                request_serializer=pb.PublishRequest.SerializeToString,
                response_deserializer=pb.PublishEvent.FromString)
            topic = f"g{rng.randrange(100000)}"
            list(pub(iter([pb.PublishRequest(item=pb.Item(topic=topic, payload=b"x" * 100,
                                                          sequence=1))]), timeout=5))
        else:  # an item over the frame limit
            pub = channel.stream_stream(
                "/sluice.v1.Relay/Publish",
                request_serializer=pb.PublishRequest.SerializeToString,
                response_deserializer=pb.PublishEvent.FromString)
            list(pub(iter([pb.PublishRequest(item=pb.Item(
                topic="big", payload=b"x" * ((FRAME_MIB << 20) + 1), sequence=1))]), timeout=5))
    except grpc.RpcError:
        pass  # refused: what it should be


def client_hello():
    """The bytes of a real TLS ClientHello."""
    out = ssl.MemoryBIO()
    obj = TLS.wrap_bio(ssl.MemoryBIO(), out, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


STALLED = {"held": 0, "closed_by_relay": 0}
STALLED_LOCK = threading.Lock()


def stalled(key):
    with STALLED_LOCK:
        STALLED[key] += 1


def hostile_tls(http, grpc_target, rng):
    """A TLS attacker on either port."""
    host, port = (http if rng.random() < 0.5 else grpc_target).rsplit(":", 1)
    kind = rng.randrange(5)
    try:
        if kind == 4:  # a renegotiation attempt: TLS 1.2, then s_client's "R"
            p = subprocess.Popen(
                ["openssl", "s_client", "-connect", f"{host}:{port}", "-tls1_2", "-quiet"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.3)
                p.stdin.write(b"R\n")
                p.stdin.flush()
                time.sleep(0.3)
            except OSError:
                pass
            finally:
                p.kill()
                p.wait()
            return
        s = socket.create_connection((host, int(port)), timeout=5)
        if kind == 1:  # half a ClientHello
            hello = client_hello()
            s.sendall(hello[: rng.randrange(1, len(hello))])
        elif kind == 2:  # a handshake record declaring more than TLS allows (2^14 + 2048)
            s.sendall(b"\x16\x03\x03\xff\xff" + os.urandom(rng.randrange(1, 4096)))
        elif kind == 3:  # an application-data record before any handshake, oversized
            s.sendall(b"\x17\x03\x03\x48\x01" + os.urandom(rng.randrange(1, 18433)))
        if kind in (0, 1):  # stalled: held until the relay closes it (handshake_timeout_ms)
            stalled("held")
            s.settimeout(HANDSHAKE_TIMEOUT_S * 4)
            try:
                if not s.recv(4096):
                    stalled("closed_by_relay")
            except ConnectionResetError:
                stalled("closed_by_relay")
            except OSError:
                pass  # (timed out: held past the limit; counted by the check)
            s.close()
        else:
            read_answer_and_close(s)
    except OSError:
        pass


class Healthy:
    """A publisher and a subscriber on the lossless topic "healthy"."""

    def __init__(self, channel, pb):
        self.pb = pb
        self.channel = channel
        self.stop = threading.Event()
        self.received = []
        self.acked = -1
        self.errors = []
        self.sub = channel.unary_stream(
            "/sluice.v1.Relay/Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.SubscribeEvent.FromString)(
                pb.SubscribeRequest(topic="healthy", name="healthy"))
        self.sub.initial_metadata()
        self.reader = threading.Thread(target=self.read)
        self.writer = threading.Thread(target=self.write)
        self.reader.start()
        self.writer.start()

    def read(self):
        try:
            for event in self.sub:
                kind = event.WhichOneof("event")
                if kind == "gap":
                    self.errors.append(f"gap: {event.gap}")
                items = [event.item] if kind == "item" else list(event.batch.items)
                self.received.extend(i.sequence for i in items)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"subscriber: {e.code()} {e.details()}")

    def write(self):
        pb = self.pb
        pub = self.channel.stream_stream(
            "/sluice.v1.Relay/Publish",
            request_serializer=pb.PublishRequest.SerializeToString,
            response_deserializer=pb.PublishEvent.FromString)

        def items():
            seq = 0
            while not self.stop.is_set():
                yield pb.PublishRequest(item=pb.Item(topic="healthy" if seq == 0 else "",
                                                     payload=os.urandom(1024), sequence=seq))
                seq += 1
                time.sleep(0.002)

        try:
            for event in pub(items()):
                if event.WhichOneof("event") == "ack":
                    self.acked = event.ack.sequence
                elif event.WhichOneof("event") == "dropped":
                    self.errors.append(f"dropped: {event.dropped}")
        except grpc.RpcError as e:
            self.errors.append(f"publisher: {e.code()} {e.details()}")

    def finish(self):
        self.stop.set()
        self.writer.join(timeout=30)
        deadline = time.monotonic() + 30
        while len(self.received) <= self.acked and time.monotonic() < deadline:
            time.sleep(0.05)
        self.sub.cancel()
        self.reader.join(timeout=30)


def main():
    global TLS
    sluice, proto_dir, protoc = sys.argv[1:4]
    pb, _ = relay_pb.generated(proto_dir, protoc)
    certs = None
    if sys.argv[4:5] == ["--tls"]:
        certs = tempfile.mkdtemp(prefix="sluice_soak_tls_")
        subprocess.run([sys.argv[5], certs], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        TLS = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))

    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0",
               STREAM_MAX_FRAME_SIZE_MB=str(FRAME_MIB), SLUICE_MAX_QUEUE_BYTES=f"{QUEUE_MIB}MiB",
               SLUICE_MAX_TOPICS=str(MAX_TOPICS), SLUICE_TOPIC_IDLE_TIMEOUT_MS="1000",
               SLUICE_IDLE_TIMEOUT_MS="2000",
               SLUICE_HANDSHAKE_TIMEOUT_MS=str(int(HANDSHAKE_TIMEOUT_S * 1000)),
               SLUICE_MAX_WAIT_MS="30000", SLUICE_THREADS="2")
    if certs:
        env.update(SLUICE_TLS_CERT_FILE=os.path.join(certs, "relay.pem"),
                   SLUICE_TLS_KEY_FILE=os.path.join(certs, "relay.key"))
    relay = subprocess.Popen([sluice, "serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=env, text=True)
    try:
        listening = json.loads(relay.stdout.readline())
        http, grpc_target = listening["http"], listening["grpc"]
        def grpc_channel():
            if not certs:
                return grpc.insecure_channel(grpc_target)
            with open(os.path.join(certs, "ca.pem"), "rb") as f:
                return grpc.secure_channel(grpc_target,
                                           grpc.ssl_channel_credentials(root_certificates=f.read()))

        channel = grpc_channel()
        grpc.channel_ready_future(channel).result(timeout=10)
        time.sleep(0.5)
        base_fds, base_rss = fds(relay.pid), rss_kib(relay.pid)
        base_sockets, _ = fd_kinds(relay.pid)
        healthy = Healthy(channel, pb)
        hostile_channel = grpc_channel()

        stop = threading.Event()
        counts = {"ws": 0, "http": 0, "grpc": 0, "tls": 0}
        kinds = ["ws", "ws", "http", "grpc"] + (["tls", "tls"] if certs else [])

        broken = []  # an attacker that failed in a way the test did not plan for

        def attacker(n):
            rng = random.Random(SEED * 100 + n)
            while not stop.is_set():
                kind = rng.choice(kinds)
                try:
                    if kind == "ws":
                        hostile_ws(http, rng)
                    elif kind == "http":
                        hostile_http(http, grpc_target, rng)
                    elif kind == "tls":
                        hostile_tls(http, grpc_target, rng)
                    else:
                        hostile_grpc(hostile_channel, pb, rng)
                except Exception as e:  # noqa: BLE001  (reported below)
                    broken.append(f"{kind}: {e!r}")
                    return
                counts[kind] += 1

        attackers = [threading.Thread(target=attacker, args=(n,)) for n in range(6)]
        for a in attackers:
            a.start()
        peak_rss = base_rss
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            time.sleep(1)
            peak_rss = max(peak_rss, rss_kib(relay.pid))
            check_metrics(http)
        stop.set()
        for a in attackers:
            a.join(timeout=60)
        hostile_channel.close()
        healthy.finish()

        assert not broken, broken
        # The healthy pair: every acknowledged item, in order, none twice, nothing dropped.
        assert not healthy.errors, healthy.errors[:5]
        assert healthy.acked > 0, "the healthy publisher got no ack"
        got = healthy.received[: healthy.acked + 1]
        assert got == list(range(healthy.acked + 1)), \
            f"healthy subscriber: {len(healthy.received)} items, first wrong at " \
            f"{next(i for i, (a, b) in enumerate(zip(got, range(len(got)))) if a != b)}"
        # Memory within budget + constant.
        grown_mib = (peak_rss - base_rss) / 1024
        assert grown_mib <= RSS_BOUND_MIB, f"RSS grew {grown_mib:.1f} MiB > {RSS_BOUND_MIB} MiB"
        # Connections and sessions back to the baseline once the hostile clients are gone: the
        # sockets to within one still closing (thousands of hostile connections leave at most
        # that, so nothing accumulates); gRPC's own wake-up descriptors, one per thread it added
        # under the load, stay with its threads, bounded by GRPC_OTHER_FDS.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = check_metrics(http)
            sockets, other = fd_kinds(relay.pid)
            if sockets <= base_sockets + 1 and metric(text, "sluice_sessions") == 0:
                break
            time.sleep(0.2)
        text = check_metrics(http)
        sockets, other = fd_kinds(relay.pid)
        assert sockets <= base_sockets + 1, f"sockets {sockets} > baseline {base_sockets} + 1"
        assert fds(relay.pid) <= base_fds + GRPC_OTHER_FDS, \
            f"fds {fds(relay.pid)} > baseline {base_fds} + {GRPC_OTHER_FDS}"
        assert metric(text, "sluice_sessions") == 0, f"sessions {metric(text, 'sluice_sessions')}"
        # Every stalled handshake was closed by the relay (at handshake_timeout_ms; the attacker
        # waits four times that).
        assert STALLED["closed_by_relay"] == STALLED["held"], \
            f"stalled TLS handshakes: {STALLED} (held past {HANDSHAKE_TIMEOUT_S} s)"
        print(f"hostile soak {SECONDS:.0f} s{' (TLS)' if certs else ''}: {counts} hostile "
              f"clients; stalled TLS handshakes closed by the relay: {STALLED}; healthy pair "
              f"{healthy.acked + 1} items, none lost; RSS {base_rss // 1024} -> peak "
              f"{peak_rss // 1024} MiB (bound +{RSS_BOUND_MIB}); fds {base_fds} -> {fds(relay.pid)} "
              f"(sockets {base_sockets} -> {sockets}); "
              f"topics {metric(text, 'sluice_topics')}, removed "
              f"{metric(text, 'sluice_topics_removed_total')}, refused "
              f"{metric(text, 'sluice_topics_refused_total')}")
    finally:
        relay.terminate()
        relay.wait(timeout=15)
        if certs:
            shutil.rmtree(certs, ignore_errors=True)


if __name__ == "__main__":
    main()

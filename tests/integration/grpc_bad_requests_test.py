#!/usr/bin/env python3
"""Requests the relay cannot decode get INVALID_ARGUMENT saying what is wrong, write nothing to
the relay's stderr, and leave the healthy calls beside them untouched.

- a string field that is not valid UTF-8 (Subscribe topic and name, Publish Item.topic, Work
  join name): INVALID_ARGUMENT naming the field;
- bytes that are no protobuf message: INVALID_ARGUMENT "malformed";
- a message larger than the frame limit allows (STREAM_MAX_FRAME_SIZE_MB=1: 3 MiB): INVALID_ARGUMENT
  naming STREAM_MAX_FRAME_SIZE_MB, not gRPC's retryable RESOURCE_EXHAUSTED.

Usage: grpc_bad_requests_test.py path/to/sluice
Real processes: `sluice serve` on 127.0.0.1, python3-grpcio sending hand-encoded requests.
"""
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request

import grpc

SLUICE = sys.argv[1]


def field(number, payload):
    """A length-delimited protobuf field (wire type 2); short payloads only."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def varint_field(number, value):
    assert value < 128
    return bytes([number << 3, value])


def status_of(call):
    try:
        for _ in call:
            pass
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def expect(what, got, code, *words):
    assert got[0] == code, f"{what}: {got}"
    for w in words:
        assert w in got[1], f"{what}: {w!r} not in {got[1]!r}"
    print(f"ok: {what}: {got[0].name} {got[1]}")


def main():
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0",
               STREAM_MAX_FRAME_SIZE_MB="1")
    serve = subprocess.Popen([SLUICE, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
    stderr_lines = []
    threading.Thread(target=lambda: stderr_lines.extend(serve.stderr), daemon=True).start()
    try:
        listening = json.loads(serve.stdout.readline())
        channel = grpc.insecure_channel(listening["grpc"])
        grpc.channel_ready_future(channel).result(timeout=10)
        raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        subscribe = channel.unary_stream("/sluice.v1.Relay/Subscribe", **raw)
        publish = channel.stream_stream("/sluice.v1.Relay/Publish", **raw)
        work = channel.stream_stream("/sluice.v1.Relay/Work", **raw)

        # A healthy subscriber stays through all of it and gets the healthy publisher's item.
        healthy = subscribe(field(1, b"healthy"), timeout=30)
        healthy.initial_metadata()

        bad_utf8 = b"\xff\xfe"
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        expect("subscribe topic", status_of(subscribe(field(1, bad_utf8), timeout=10)), invalid,
               "SubscribeRequest.topic", "UTF-8")
        expect("subscribe name",
               status_of(subscribe(field(1, b"cam") + field(2, b"ab" + bad_utf8), timeout=10)),
               invalid, "SubscribeRequest.name", "UTF-8")
        item = field(1, b"t" + bad_utf8) + field(2, b"x")
        expect("publish item topic", status_of(publish(iter([field(1, item)]), timeout=10)),
               invalid, "Item.topic", "UTF-8")
        join = field(1, b"stage.in") + field(2, bad_utf8)
        expect("work join name", status_of(work(iter([field(1, join)]), timeout=10)), invalid,
               "WorkJoin.name", "UTF-8")
        expect("publish garbage", status_of(publish(iter([b"\xff\xff\xff\xff"]), timeout=10)),
               invalid, "malformed", "PublishRequest")
        # 4 MiB: over the 3 MiB the relay decodes, under gRPC's own backstop (twice that).
        big = b"\x0a" + bytes([0x80 | 0x7f, 0xff, 0xff, 0x01]) + b"\0" * (4 << 20)
        expect("publish oversized", status_of(publish(iter([big]), timeout=30)), invalid,
               "STREAM_MAX_FRAME_SIZE_MB", str(len(big)))

        # The healthy pair: a publish still goes through and reaches the subscriber.
        ok_item = field(1, b"healthy") + field(2, b"still here") + varint_field(3, 7)
        events = list(publish(iter([field(1, ok_item)]), timeout=10))
        assert events, "no ack for the healthy publish"
        first = next(healthy)
        assert b"still here" in first, first
        healthy.cancel()
        print("ok: the healthy subscriber got the healthy item")

        # Each refusal is counted by its kind.
        text = urllib.request.urlopen(f"http://{listening['http']}/metrics", timeout=5).read()
        counted = {k: float(v) for k, v in re.findall(
            rb'^sluice_refusals_total\{kind="(\w+)"\} (\S+)$', text, re.M)}
        assert counted.get(b"bad_request", 0) >= 5 and counted.get(b"frame_too_big", 0) >= 1, \
            counted
        print(f"ok: refusals counted: {counted}")
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    # Protobuf's own complaints about the input are the refusal's message, not log lines of
    # their own; the log has the refusals themselves (its "refused" events, bounded).
    noise = [l for l in stderr_lines
             if ("protobuf" in l or "UTF-8" in l) and '"event":"refused"' not in l]
    assert not noise, f"the relay logged bad input: {noise[:3]}"
    print("ok: nothing about them on the relay's stderr")


if __name__ == "__main__":
    main()

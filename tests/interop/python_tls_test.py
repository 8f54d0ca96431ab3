#!/usr/bin/python3
"""TLS from Python: `sluice serve` with certificates made by the openssl command and tokens,
driven by python3-grpcio over gRPC TLS (`authorization: Bearer` metadata) and
python3-websockets over wss:// (the token as the subprotocol `sluice.bearer.<token>`). A
plaintext WebSocket to the TLS port is refused with a 400 saying what the port speaks. SIGHUP
with renewed certificate files: the relay says it reloaded them, the open wss:// session
carries on, and new connections get the new certificate.

Usage: python_tls_test.py SLUICE_BINARY PROTO_DIR PROTOC MAKE_TEST_CERTS
"""
import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
import relay_pb  # noqa: E402  (tests/pylib)
import relay_process  # noqa: E402
import websockets

READER, WRITER = "reader-token-0123", "writer-token-4567"


def certificates(make_certs, into):
    os.makedirs(into)
    subprocess.run([make_certs, into], check=True)
    return into


def tls_context(ca):
    ctx = ssl.create_default_context(cafile=ca)  # verifies the chain and the host (127.0.0.1)
    return ctx


def main():
    sluice, proto_dir, protoc, make_certs = sys.argv[1:5]
    pb, gen = relay_pb.generated(proto_dir, protoc)
    work = tempfile.mkdtemp(prefix="sluice_pytls_")
    certs = certificates(make_certs, os.path.join(work, "first"))
    renewed = certificates(make_certs, os.path.join(work, "renewed"))
    served = os.path.join(work, "served")  # the files the relay is configured with
    os.makedirs(served)
    for f in ("relay.pem", "relay.key"):
        shutil.copy(os.path.join(certs, f), served)

    relay, line = relay_process.serve(
        sluice, f'[server]\ntls_cert_file = "{served}/relay.pem"\n'
                f'tls_key_file = "{served}/relay.key"\n' + relay_process.principals(READER, WRITER),
        gen, "tls.toml")
    try:
        with open(os.path.join(certs, "ca.pem"), "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(line["grpc"], creds)
        grpc.channel_ready_future(channel).result(timeout=10)
        calls = relay_pb.Calls(channel, pb)
        print("ok: gRPC over TLS, trusting the relay's CA")

        async def run():
            base = f"wss://{line['http']}"
            first_ca = tls_context(os.path.join(certs, "ca.pem"))
            try:
                async with websockets.connect(f"ws://{line['http']}/v1/ws/subscribe/py.cam"):
                    raise AssertionError("a plaintext WebSocket to the TLS port was accepted")
            except websockets.InvalidStatusCode as e:
                assert e.status_code == 400, e.status_code
            print("ok: ws:// to the TLS port: 400")
            async with websockets.connect(
                    f"{base}/v1/ws/subscribe/py.cam", ssl=first_ca,
                    subprotocols=["sluice", f"sluice.bearer.{READER}"]) as viewer:
                assert viewer.subprotocol == "sluice", viewer.subprotocol
                acks = list(calls.publish(iter([pb.PublishRequest(item=pb.Item(
                    topic="py.cam", payload=b"over tls", sequence=1))]), timeout=10,
                    metadata=[("authorization", f"Bearer {WRITER}")]))
                assert acks, "no ack"
                msg = await asyncio.wait_for(viewer.recv(), 10)
                assert msg[16:] == b"over tls", msg
                print("ok: wss:// with the subprotocol token read what gRPC TLS with the "
                      "metadata token published")

                # Renewed certificate files, then SIGHUP: the relay says so; this session
                # carries on; new connections get the new certificate.
                for f in ("relay.pem", "relay.key"):
                    shutil.copy(os.path.join(renewed, f), served)
                relay.send_signal(signal.SIGHUP)
                reloaded = json.loads(relay.stdout.readline())
                assert reloaded["event"] == "certificates_reloaded", reloaded
                new_ca = tls_context(os.path.join(renewed, "ca.pem"))
                async with websockets.connect(
                        f"{base}/v1/ws/publish/py.cam", ssl=new_ca,
                        subprotocols=[f"sluice.bearer.{WRITER}"]) as producer:
                    header = (2).to_bytes(8, "little") + (0).to_bytes(8, "little")
                    await producer.send(header + b"after sighup")
                    msg = await asyncio.wait_for(viewer.recv(), 10)
                    assert msg[16:] == b"after sighup", msg
                try:
                    async with websockets.connect(f"{base}/v1/ws/subscribe/py.cam", ssl=first_ca,
                                                  subprotocols=[f"sluice.bearer.{READER}"]):
                        raise AssertionError("the old certificate is still served")
                except ssl.SSLCertVerificationError:
                    pass
            print("ok: SIGHUP reloaded the certificate; the open session carried on")

        asyncio.run(run())
    finally:
        relay.terminate()
        assert relay.wait(timeout=10) == 0
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

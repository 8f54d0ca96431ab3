#!/usr/bin/env python3
"""Hostile connections to a TLS gRPC port (plaintext bytes, garbage) each make gRPC log a failed
handshake; the relay's stderr gets at most 10 such lines per 10 s, the rest counted, and it
serves a trusted client throughout.

Usage: grpc_log_flood_test.py path/to/sluice
Real processes: `sluice serve` with certificates made by openssl, raw sockets, python3-grpcio.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

import grpc

SLUICE = sys.argv[1]


def certificates(d):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                          "make-test-certs.sh")
    subprocess.run([script, d], check=True)


def main():
    d = tempfile.mkdtemp()
    certificates(d)
    env = dict(os.environ, SLUICE_GRPC_PORT="0", SLUICE_HTTP_PORT="0",
               SLUICE_TLS_CERT_FILE=os.path.join(d, "relay.pem"),
               SLUICE_TLS_KEY_FILE=os.path.join(d, "relay.key"))
    serve = subprocess.Popen([SLUICE, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(serve.stderr), daemon=True)
    reader.start()
    try:
        listening = json.loads(serve.stdout.readline())
        host, port = listening["grpc"].rsplit(":", 1)
        flood = 100
        for i in range(flood):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if i % 2 else os.urandom(64))
            s.settimeout(5)
            try:
                s.recv(1024)
            except OSError:
                pass
            s.close()
        with open(os.path.join(d, "ca.pem"), "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(listening["grpc"], creds)
        stats = channel.unary_unary("/sluice.v1.Relay/Stats", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        stats(b"", timeout=10)  # a trusted client is served
        print(f"ok: {flood} hostile connections, the relay still serves TLS")
    finally:
        serve.terminate()
        serve.wait(timeout=10)
        reader.join(timeout=5)
    handshake = [l for l in lines if "andshake" in l or "ssl" in l.lower()]
    print(f"relay stderr: {len(lines)} lines, {len(handshake)} about handshakes")
    assert 0 < len(lines) <= 11, "".join(lines[:20])
    print("ok: gRPC's log lines were bounded (at most 10 per 10 s)")


if __name__ == "__main__":
    main()

#!/bin/sh
# `sluice serve` prints one machine-readable line with its bound address, and stops cleanly
# (exit 0) on SIGTERM. Usage: serve_signal_test.sh path/to/sluice
set -u
out=$(mktemp)
SLUICE_GRPC_PORT=0 SLUICE_HTTP_PORT=0 "$1" serve >"$out" 2>&1 &
pid=$!
i=0
while ! grep -q '"event":"listening"' "$out"; do
  i=$((i + 1))
  if [ "$i" -gt 100 ]; then echo "no listening line:"; cat "$out"; kill -9 "$pid"; exit 1; fi
  sleep 0.1
done
grep -Eq '"grpc":"127\.0\.0\.1:[0-9]+","http":"127\.0\.0\.1:[0-9]+"' "$out" || { echo "bad address line:"; cat "$out"; exit 1; }
kill -TERM "$pid"
wait "$pid"
rc=$?
cat "$out"
rm -f "$out"
[ "$rc" -eq 0 ] || { echo "exit status $rc"; exit 1; }

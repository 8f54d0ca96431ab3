#!/bin/sh
# `sluice serve` prints one machine-readable line with its bound address, raises its soft
# descriptor limit to the hard one (started with 1024 of 4096 here) and says so, and stops
# cleanly (exit 0) on SIGTERM. Usage: serve_signal_test.sh path/to/sluice
set -u
out=$(mktemp)
hard=$(ulimit -H -n)
[ "$hard" = unlimited ] || [ "$hard" -ge 4096 ] && hard=4096
(ulimit -S -n 1024; ulimit -H -n "$hard"; SLUICE_GRPC_PORT=0 SLUICE_HTTP_PORT=0 exec "$1" serve) >"$out" 2>&1 &
pid=$!
i=0
while ! grep -q '"event":"listening"' "$out"; do
  i=$((i + 1))
  if [ "$i" -gt 100 ]; then echo "no listening line:"; cat "$out"; kill -9 "$pid"; exit 1; fi
  sleep 0.1
done
grep -Eq '"grpc":"127\.0\.0\.1:[0-9]+","http":"127\.0\.0\.1:[0-9]+"' "$out" || { echo "bad address line:"; cat "$out"; exit 1; }
grep -Eq "\"event\":\"descriptors\".*\"soft\":$hard" "$out" || { echo "the soft descriptor limit was not raised to $hard:"; cat "$out"; exit 1; }
grep -q '"soft_was":1024' "$out" || { echo "no soft_was 1024:"; cat "$out"; exit 1; }
kill -TERM "$pid"
wait "$pid"
rc=$?
cat "$out"
rm -f "$out"
[ "$rc" -eq 0 ] || { echo "exit status $rc"; exit 1; }

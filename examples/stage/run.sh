#!/bin/sh
# The stage example of docs/stages.md, end to end: a relay (examples/stage/stage.toml, on
# ephemeral ports), two workers (one 50 ms slower a frame), and camera.py publishing 30 fps
# and reading the results. Usage: run.sh [path/to/sluice]
set -eu
SLUICE=${1:-./build/src/cli/sluice}
HERE=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
pids=""
cleanup() {
  [ -z "$pids" ] || kill $pids 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT INT TERM

"$SLUICE" serve --config "$HERE/stage.toml" --grpc-port 0 --http-port 0 > "$out/relay" &
pids="$!"
i=0
until grep -q listening "$out/relay"; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "the relay did not start" >&2; exit 1; }
  sleep 0.1
done
http=$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$out/relay")
port=${http##*:}

"$SLUICE" worker --port "$port" --topic camera --name fast --width 320 --height 240 > "$out/fast" &
pids="$pids $!"
"$SLUICE" worker --port "$port" --topic camera --name slow --width 320 --height 240 \
  --delay-ms 50 > "$out/slow" &
pids="$pids $!"
sleep 0.5  # both have joined

/usr/bin/python3 "$HERE/camera.py" "$http" --seconds "${SECONDS_TO_RUN:-5}"

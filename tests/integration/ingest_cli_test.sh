#!/bin/sh
# `sluice ingest` against `sluice serve` on ephemeral ports: a test pattern's VP8 frames reach a
# subscriber; SIGINT stops the ingest with its JSON summary (frames, published, drops by
# reason); a source of another scheme is refused naming the accepted ones (exit 2); a file that
# is not there ends it with the error (exit 1); SIGTERM with the relay gone ends it at once (exit 0).
# Usage: ingest_cli_test.sh path/to/sluice
set -u
sluice=$1
. "$(dirname "$0")/cli_relay.sh"

"$sluice" sub --target "$target" --topic cam --name viewer --count 30 >"$dir/sub" 2>&1 &
sub=$!
wait_for "$dir/sub" '"event":"subscribed"'
"$sluice" ingest test:// --server "$target" --topic cam --stats-every 1 >"$dir/ingest" 2>&1 &
ingest=$!
wait "$sub" || fail "sub exit $?"
grep -q '"event":"received".*"items":30' "$dir/sub" || fail "sub summary"
wait_for "$dir/ingest" '"event":"stats"'
grep -q '"caps":"video/x-vp8' "$dir/ingest" || fail "ingest caps"
kill -INT "$ingest"
wait "$ingest" || fail "ingest exit $?"
grep -q '"event":"summary"' "$dir/ingest" || fail "no summary"
grep -q '"dropped":{"backpressure":0,"slow_down":0,"until_keyframe":0}' "$dir/ingest" || fail "drops"

if "$sluice" ingest http://example.com/cam --server "$target" --topic cam >"$dir/bad" 2>&1; then
  fail "http:// accepted"
fi
"$sluice" ingest http://example.com/cam --server "$target" --topic cam >/dev/null 2>&1
[ $? -eq 2 ] || fail "bad source not exit 2"
grep -q 'rtsp://' "$dir/bad" || fail "bad source message"
# A file that is not there: its error in the summary, exit 1.
if "$sluice" ingest file:///nonexistent/clip.mp4 --server "$target" --topic cam >"$dir/missing" 2>&1; then
  fail "a missing file exit 0"
fi
grep '"event":"summary"' "$dir/missing" | grep -q '"error":"Resource not found' || fail "missing file error"
# The relay goes away under a running ingest; SIGTERM then still ends it at once (not after the
# publisher's retries), with its summary, exit 0.
"$sluice" ingest test:// --server "$target" --topic gone --stats-every 1 >"$dir/orphan" 2>&1 &
orphan=$!
wait_for "$dir/orphan" '"event":"stats"'
kill -9 "$relay"
wait "$relay" 2>/dev/null
sleep 0.5
began=$(date +%s%N)
kill -TERM "$orphan"
wait "$orphan" || fail "ingest exit $? after SIGTERM with the relay gone"
took_ms=$(( ($(date +%s%N) - began) / 1000000 ))
# (1 s for the last acks, then out: 5 s leaves room for a loaded machine; the publisher's retries
# took 18 s)
[ "$took_ms" -lt 5000 ] || fail "SIGTERM took $took_ms ms with the relay gone"
grep -q '"event":"summary"' "$dir/orphan" || fail "no summary after SIGTERM"
rm -rf "$dir"
echo "ok"

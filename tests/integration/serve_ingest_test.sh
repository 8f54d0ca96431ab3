#!/bin/sh
# `sluice serve` with [[ingest]] entries: one process serves a camera. A test pattern's frames
# reach a subscriber of the entry's topic with no `sluice ingest` running, and its counters are
# in the relay's /metrics; `sluice config` shows
# the entry; a bad entry stops the start naming its key.
# Usage: serve_ingest_test.sh path/to/sluice
set -u
sluice=$1
relay_config='[[ingest]]
uri = "test://"
topic = "lobby.cam"
width = 320
height = 240
fps = 15'
. "$(dirname "$0")/cli_relay.sh"
wait_for "$dir/relay" '"event":"ingest_started".*"topic":"lobby.cam"'
"$sluice" sub --target "$target" --topic lobby.cam --count 20 >"$dir/sub" 2>&1 || fail "sub exit $?"
grep -q '"event":"received".*"items":20' "$dir/sub" || fail "sub summary"
# The entry's counters are in the relay's /metrics, by topic.
http=$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$dir/relay")
/usr/bin/python3 -c 'import sys, urllib.request
print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read().decode())' "$http" \
  >"$dir/metrics" || fail "GET /metrics"
published=$(sed -n 's/^sluice_ingest_published_total{topic="lobby.cam"} \([0-9]*\)$/\1/p' "$dir/metrics")
[ -n "$published" ] && [ "$published" -ge 20 ] || fail "sluice_ingest_published_total: '$published'"
grep -q '^sluice_ingest_connected{topic="lobby.cam"} 1$' "$dir/metrics" || fail "connected"
grep -q '^sluice_ingest_dropped_total{reason="backpressure",topic="lobby.cam"} [0-9]' "$dir/metrics" \
  || fail "dropped_total"
kill "$relay"
wait "$relay"
# The effective configuration shows the entry.
"$sluice" config --config "$dir/relay.toml" >"$dir/config" 2>&1 || fail "config exit $?"
grep -q '^\[\[ingest\]\]' "$dir/config" || fail "config shows no [[ingest]]"
grep -q '^uri = "test://"' "$dir/config" || fail "config shows no uri"
# A bad entry stops the start, naming its key and what is accepted.
printf '[[ingest]]\nuri = "http://example.com/cam"\ntopic = "x"\n' >"$dir/bad.toml"
SLUICE_GRPC_PORT=0 SLUICE_HTTP_PORT=0 "$sluice" serve --config "$dir/bad.toml" >"$dir/bad" 2>&1
[ $? -eq 2 ] || fail "a bad [[ingest]] not exit 2"
grep -q 'ingest.uri.*rtsp://' "$dir/bad" || fail "bad entry message"
rm -rf "$dir"
echo "ok"

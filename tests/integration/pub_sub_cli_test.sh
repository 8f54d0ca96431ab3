#!/bin/sh
# `sluice pub` and `sluice sub` against `sluice serve` on ephemeral ports: generated items all
# arrive, lines from stdin arrive as items, and each prints its JSON summary.
# Usage: pub_sub_cli_test.sh path/to/sluice
set -u
sluice=$1
dir=$(mktemp -d)
fail() { echo "FAIL: $*"; for f in "$dir"/*; do echo "--- $f"; cat "$f"; done; kill "$relay" 2>/dev/null; exit 1; }
wait_for() {  # file pattern
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -gt 150 ] && fail "no '$2' in $1"; sleep 0.1
  done
}
SLUICE_GRPC_PORT=0 SLUICE_HTTP_PORT=0 "$sluice" serve >"$dir/relay" 2>&1 &
relay=$!
wait_for "$dir/relay" '"event":"listening"'
target=$(sed -n 's/.*"grpc":"\([^"]*\)".*/\1/p' "$dir/relay")

# Generated items: 300 x 512 B, all received.
"$sluice" sub --target "$target" --topic gen --name cli --count 300 >"$dir/sub1" 2>&1 &
sub1=$!
wait_for "$dir/sub1" '"event":"subscribed"'
"$sluice" pub --target "$target" --topic gen --count 300 --size 512 >"$dir/pub1" 2>&1 || fail "pub exit $?"
wait "$sub1" || fail "sub exit $?"
grep -q '"items":300' "$dir/pub1" || fail "pub summary"
grep -q '"status":"OK"' "$dir/pub1" || fail "pub status"
grep -q '"event":"received".*"items":300' "$dir/sub1" || fail "sub summary"

# Lines from stdin are items; --print writes them back.
"$sluice" sub --target "$target" --topic lines --count 3 --print >"$dir/sub2" 2>"$dir/sub2.err" &
sub2=$!
wait_for "$dir/sub2.err" '"event":"subscribed"'
printf 'alpha\nbeta\ngamma\n' | "$sluice" pub --target "$target" --topic lines --stdin >"$dir/pub2" 2>&1 || fail "pub --stdin"
wait "$sub2" || fail "sub --print exit"
[ "$(cat "$dir/sub2")" = "$(printf 'alpha\nbeta\ngamma')" ] || fail "printed payloads"

# A bad topic name: a clear error and a non-zero exit.
if "$sluice" pub --target "$target" --topic 'bad topic' --count 1 >"$dir/pub3" 2>&1; then fail "bad topic accepted"; fi
grep -q 'INVALID_ARGUMENT' "$dir/pub3" || fail "bad topic status"

kill -TERM "$relay"; wait "$relay" || fail "relay exit"
rm -rf "$dir"
echo "pub/sub CLI ok"

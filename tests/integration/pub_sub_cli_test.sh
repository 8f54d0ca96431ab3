#!/bin/sh
# `sluice pub` and `sluice sub` against `sluice serve` on ephemeral ports: generated items all
# arrive, lines from stdin arrive as items, and each prints its JSON summary.
# Usage: pub_sub_cli_test.sh path/to/sluice
set -u
sluice=$1
. "$(dirname "$0")/cli_relay.sh"

# Generated items: 300 x 512 B, all received.
"$sluice" sub --target "$target" --topic gen --name cli --count 300 >"$dir/sub1" 2>&1 &
sub1=$!
wait_for "$dir/sub1" '"event":"subscribed"'
"$sluice" pub --target "$target" --topic gen --count 300 --size 512 >"$dir/pub1" 2>&1 || fail "pub exit $?"
wait "$sub1" || fail "sub exit $?"
grep -q '"acked":300' "$dir/pub1" || fail "pub summary"
grep -q '"status":"OK"' "$dir/pub1" || fail "pub status"
grep -q '"event":"received".*"items":300' "$dir/sub1" || fail "sub summary"
# (the CLI's items carry wall-clock stamps: every one gives a latency)
grep -q '"latency_items":300' "$dir/sub1" || fail "sub latency from every item"
grep -q '"other_clock_items":0' "$dir/sub1" || fail "sub: wall-clock stamps taken for another clock"

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

# The relay's address from the environment; a refused subscription says so and exits 1, without
# claiming it subscribed.
if SLUICE_SERVER="$target" "$sluice" sub --topic 'bad topic' --count 1 >"$dir/sub3" 2>&1; then
  fail "bad subscription exit 0"
fi
grep -q 'INVALID_ARGUMENT' "$dir/sub3" || fail "bad subscription status"
if grep -q '"event":"subscribed"' "$dir/sub3"; then fail "claimed subscribed"; fi

# An unknown command is named, with the ones there are (exit 2).
"$sluice" frob >"$dir/frob" 2>&1
[ $? -eq 2 ] || fail "unknown command not exit 2"
grep -q "unknown command 'frob'; the commands are .*serve, pub, sub" "$dir/frob" || fail "unknown command message"

# Usage errors exit 2; --version names the build.
"$sluice" pub --no-such-flag >/dev/null 2>&1 && fail "usage error exit 0"
"$sluice" pub --no-such-flag >/dev/null 2>&1; [ $? -eq 2 ] || fail "usage error not exit 2"
"$sluice" --version | grep -q '^sluice [0-9.]* (git ' || fail "--version"

# A publisher interrupted (SIGINT) flushes and prints its summary.
"$sluice" pub --server "$target" --topic slow --count 100000 --rate 200 >"$dir/pub4" 2>&1 &
pub4=$!
# (once it publishes: a SIGINT before it took the signal would be lost — a background job starts
# with SIGINT ignored — and it would run its 100000 items)
wait_for "$dir/relay" '"event":"session_opened","kind":"publisher".*"topic":"slow"'
kill -INT "$pub4"
wait "$pub4" || fail "interrupted pub exit $?"
grep -q '"interrupted":true' "$dir/pub4" || fail "no summary after SIGINT"

# On a terminal, a long run shows a progress line on stderr (script(1) gives it a pty).
script -qec "'$sluice' pub --server '$target' --topic progress --count 25 --rate 10" /dev/null \
  >"$dir/pub6" 2>&1 || fail "pub on a terminal"
grep -q 'sent [0-9]*, acked [0-9]*' "$dir/pub6" || fail "no progress line on a terminal"
if grep -q 'acked [0-9]* (' "$dir/pub1"; then fail "progress line outside a terminal"; fi

# The worker takes the relay's HTTP address as --server (or SLUICE_HTTP_SERVER).
http=$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$dir/relay")
"$sluice" worker --server "$http" --topic no-stage >"$dir/worker" 2>&1 && fail "worker on a topic without a stage"
grep -q 'no stage\|404' "$dir/worker" || fail "worker --server did not reach the relay: $(cat "$dir/worker")"

# The relay stops and does not come back: a subscriber exits 1 (a supervisor can tell), after
# trying to resume for --reconnect-for seconds.
"$sluice" sub --server "$target" --topic gen --reconnect-for 1 >"$dir/sub5" 2>&1 &
sub5=$!
wait_for "$dir/sub5" '"event":"subscribed"'
kill -TERM "$relay"; wait "$relay" || fail "relay exit"
if wait "$sub5"; then fail "sub exit 0 after the relay went away"; fi
grep -q 'did not come back' "$dir/sub5" || fail "sub reason"
rm -rf "$dir"
echo "pub/sub CLI ok"

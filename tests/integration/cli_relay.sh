# Sourced by the CLI tests: a scratch directory, fail() that prints what was written there,
# wait_for FILE PATTERN, and `sluice serve` on ephemeral ports ($relay: its pid; $target: its
# gRPC address). Expects $sluice; with $relay_config (a TOML text), the relay reads it.
dir=$(mktemp -d)
fail() { echo "FAIL: $*"; for f in "$dir"/*; do echo "--- $f"; cat "$f"; done; kill "$relay" 2>/dev/null; exit 1; }
wait_for() {  # file pattern
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -gt 200 ] && fail "no '$2' in $1"; sleep 0.1
  done
}
config=""
if [ -n "${relay_config:-}" ]; then
  printf '%s\n' "$relay_config" >"$dir/relay.toml"
  config="--config $dir/relay.toml"
fi
# shellcheck disable=SC2086
SLUICE_GRPC_PORT=0 SLUICE_HTTP_PORT=0 "$sluice" serve $config >"$dir/relay" 2>&1 &
relay=$!
wait_for "$dir/relay" '"event":"listening"'
target=$(sed -n 's/.*"grpc":"\([^"]*\)".*/\1/p' "$dir/relay")

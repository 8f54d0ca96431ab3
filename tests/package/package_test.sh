#!/usr/bin/env bash
# Sluice as a package, as a user installs it:
#  1. `cmake --install` into a scratch prefix; a project outside the tree builds against it with
#     find_package(sluice COMPONENTS client) (sluice::core, sluice::client) and with pkg-config
#     (sluice), and its programs run;
#  2. `cpack` makes the .deb; it unpacks into a scratch root with the binary, the systemd unit
#     and the default configuration; the binary runs and checks that configuration.
# Usage: package_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src="$1"
build="$2"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail() { echo "package test: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$dir/prefix" >/dev/null
cmake -S "$src/tests/package/consumer" -B "$dir/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$dir/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null || fail "configure consumer"
cmake --build "$dir/consumer" >/dev/null || fail "build consumer"
"$dir/consumer/core_only" | grep -q 'first=3 dropped=3' || fail "core_only"
"$dir/consumer/with_client" | grep -q UNAVAILABLE || fail "with_client"

export PKG_CONFIG_PATH="$dir/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
g++ -o "$dir/pc_core" "$src/tests/package/consumer/core_only.cpp" $(pkg-config --cflags --libs sluice) \
  || fail "pkg-config build"
"$dir/pc_core" | grep -q 'first=3' || fail "pkg-config program"
pkg-config --exists sluice-client || fail "sluice-client.pc"

(cd "$build" && cpack -G DEB -B "$dir/deb" >/dev/null) || fail "cpack"
deb="$(ls "$dir"/deb/sluice_*.deb)"
dpkg-deb -f "$deb" Depends | grep -q 'libgrpc++' || fail "Depends lacks gRPC: $(dpkg-deb -f "$deb" Depends)"
dpkg-deb -x "$deb" "$dir/root"
for f in usr/bin/sluice usr/lib/systemd/system/sluice.service usr/share/sluice/sluice.toml \
         usr/include/sluice/channel.hpp usr/lib/cmake/sluice/sluiceConfig.cmake; do
  [[ -e "$dir/root/$f" ]] || fail "the .deb lacks /$f"
done
"$dir/root/usr/bin/sluice" --version | grep -q '^sluice ' || fail "packaged binary --version"
"$dir/root/usr/bin/sluice" config --config "$dir/root/usr/share/sluice/sluice.toml" | grep -q 'grpc_port = 7400' \
  || fail "packaged configuration"
grep -q '^Type=notify' "$dir/root/usr/lib/systemd/system/sluice.service" || fail "unit type"
dpkg-deb -I "$deb" postinst | grep -q '/etc/sluice/sluice.toml' || fail "postinst"
echo "package ok: $(basename "$deb")"

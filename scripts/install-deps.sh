#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/debian-packages.txt that are missing, Node.js
# and npm if there is no npm, and the npm modules of web/ (uPlot, built into the relay's
# dashboard; playwright-core, for its browser tests) when web/node_modules is missing or older
# than web/package-lock.json. Runs apt-get as root directly, or through sudo otherwise. Does
# nothing when all are present.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mapfile -t wanted < <(grep -Ev '^\s*(#|$)' "$here/debian-packages.txt")
missing=()
for pkg in "${wanted[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
# (Debian's npm, unless Node.js came with its own, as NodeSource's does.)
if ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
web_modules() {
  local lock="$here/../web/package-lock.json" have="$here/../web/node_modules/.package-lock.json"
  if [[ ! -f "$have" || "$lock" -nt "$have" ]]; then
    echo "sluice: installing the npm modules of web/ (npm ci)"
    (cd "$here/../web" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
if ((${#missing[@]} == 0)); then
  web_modules
  exit 0
fi
echo "sluice: installing missing Debian packages: ${missing[*]}"
if [[ "$(id -u)" -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "sluice: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || "${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
web_modules

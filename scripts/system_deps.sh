#!/usr/bin/env bash
# Debian packages a make target needs, checked before anything else runs.
#
#   scripts/system_deps.sh redis-server:redis-server chromium:chromium     # COMMAND:PACKAGE ...
#
# Each COMMAND missing from PATH names its PACKAGE. As root on a machine with apt-get (a fresh
# Debian/Ubuntu box, a container, CI) the missing packages are installed; anywhere else the script
# prints the one command that installs them and exits 1, so `make test` stops with the fix instead
# of quietly skipping the tests that need them.
set -euo pipefail

missing=()
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    exit 0
fi
echo "error: missing system packages: ${missing[*]}" >&2
echo "install them first (Debian/Ubuntu): sudo apt-get install -y ${missing[*]}" >&2
echo "(other systems: the same packages from your package manager; chromium may be any Chromium or Chrome on PATH as 'chromium')" >&2
exit 1

#!/usr/bin/env bash
# Builds dnsfence (release) and runs the peer harness with the gateway as its target:
#
#   sudo ./bench-gateway.sh                      # dnsdist (with and without cache), unbound, dnsfence
#   CONFIGS="dnsdist-cache dnsdist-nocache" sudo ./bench-gateway.sh
#
# Every knob of run.sh applies (see README.md). The gateway runs with a real store, policy and
# grant subscriber (dnsfence-target.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$HERE/build-dnsfence.sh"
export CONFIGS=${CONFIGS:-"dnsdist-nocache dnsdist-cache unbound"}
export TARGET_CMD="$HERE/dnsfence-target.sh"
exec "$HERE/run.sh" "${TARGET_PORT:-5400}"

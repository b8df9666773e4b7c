#!/usr/bin/env bash
# Builds (release) what dnsfence-target.sh runs: the policy store, the gateway, the CLI and
# grant-sink, plus the other loadtest binaries named as arguments (bench-tracing: otlp-sink).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# two steps: `--bin` would limit every package of the same command to that one binary
cargo build --release --locked -q -p dnsfence-policy-store -p dnsfence-resolver-gateway \
  -p dnsfence-cli
bins=(--bin grant-sink)
for b in "$@"; do bins+=(--bin "$b"); done
cargo build --release --locked -q -p dnsfence-loadtest "${bins[@]}"

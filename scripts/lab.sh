#!/usr/bin/env bash
# The README's first command: builds dnsfence (release) and brings up the lab — a small world
# of network namespaces with the policy store, two resolver-gateway replicas and the
# node-enforcer — applies the seed policies and prints what is allowed and what is blocked.
# Arguments go to `dnsfence lab up` (e.g. --dir DIR). Needs root. Idempotent: running it
# again while the lab is up shows the verdicts again; `dnsfence lab down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "the lab needs root (network namespaces, BPF): sudo $0 $*" >&2
  exit 1
fi

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# the eBPF datapath (services/node-enforcer/build.rs)
command -v clang-19 >/dev/null 2>&1 || need_apt+=(clang-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
# to try things by hand inside the pods (dnsfence lab exec nginx -- dig/curl/nc ...)
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v nc >/dev/null 2>&1 || need_apt+=(netcat-openbsd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.95 (https://rustup.rs)" >&2
  exit 1
fi

echo "==> building (release)"
cargo build --release --locked -q -p dnsfence-cli -p dnsfence-policy-store \
  -p dnsfence-resolver-gateway -p dnsfence-node-enforcer -p dnsfence-test-authority

target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/dnsfence" lab up "$@"

#!/usr/bin/env bash
# Brings up dnsfence on this machine and shows what the seed policies allow.
# Today this is the standalone policy store with the CLI; the network-namespace lab with the
# gateway and the enforcer arrives with them (see README "Status").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cc >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config
  else
    echo "a C toolchain is missing: run as root or install build-essential" >&2; exit 1
  fi
fi
echo "==> building (release)"
cargo build --release --locked -q -p dnsfence-cli -p dnsfence-policy-store

dir="${DNSFENCE_LAB_DIR:-./.dnsfence-lab}"
mkdir -p "$dir"
sock="$dir/store.sock"
if [ -f "$dir/store.pid" ] && kill -0 "$(cat "$dir/store.pid")" 2>/dev/null; then
  kill "$(cat "$dir/store.pid")"; sleep 0.5
fi
./target/release/dnsfence-policy-store --data-dir "$dir/store" --listen "" --unix-socket "$sock" \
  >"$dir/store.log" 2>&1 &
echo $! >"$dir/store.pid"
export DNSFENCE_STORE="unix://$sock"
dnsfence=./target/release/dnsfence
for _ in $(seq 50); do $dnsfence version >/dev/null 2>&1 && break; sleep 0.1; done

echo "==> registering pods and applying the seed policies (examples/seed, verbatim)"
$dnsfence workload add default/nginx --ip 192.0.2.10 --ip 2001:db8::10 -l run=nginx >/dev/null
$dnsfence workload add default/other --ip 192.0.2.11 -l run=other >/dev/null
$dnsfence workload add kube-system/coredns --ip 192.0.2.53 -l k8s-app=kube-dns >/dev/null
$dnsfence apply -f examples/seed/allow-github.yaml -f examples/seed/allow-dns.yaml

echo
echo "==> what the policies decide"
for args in "default/nginx api.github.com --port 443/TCP" \
            "default/nginx github.com --port 443/TCP" \
            "default/nginx github.com --port 80/TCP" \
            "default/nginx npmjs.com" \
            "default/nginx 192.0.2.53 --port 53/UDP" \
            "default/other npmjs.com" \
            "default/other npmjs.com --default DefaultDeny"; do
  echo "\$ dnsfence explain $args"
  # shellcheck disable=SC2086
  $dnsfence explain $args | sed 's/^/  /'
done
echo
echo "The store keeps running (pid $(cat "$dir/store.pid"), log $dir/store.log)."
echo "Try: DNSFENCE_STORE=unix://$sock $dnsfence events"
echo "Stop it: kill \$(cat $dir/store.pid)"

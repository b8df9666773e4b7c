#!/usr/bin/env bash
# The harness's TARGET_CMD for dnsfence: the gateway in its real configuration.
#
#   PORT=5400 UPSTREAM=127.0.0.1:5300 ALLOWLIST=allowlist.txt ./dnsfence-target.sh
#
# Starts a policy store (Unix socket), applies an ApplicationNetworkPolicy generated from the
# allowlist to a pod registered at 127.0.0.1 (the load generator's address), starts a grant
# subscriber for the pod's node that stores and acks every grant, then execs the gateway in the
# foreground, so the harness pins and measures the gateway process itself. The store and the
# subscriber run on CLIENT_CPU and are stopped when the gateway exits.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${DNSFENCE_BIN:-$HERE/../../target/release}
: "${PORT:?}" "${UPSTREAM:?}" "${ALLOWLIST:?}"
SIDE_CPU=${CLIENT_CPU:-0}
W=$(mktemp -d "${TMPDIR:-/tmp}/dnsfence-target.XXXXXX")
for b in dnsfence-policy-store dnsfence-resolver-gateway dnsfence grant-sink; do
  [ -x "$BIN/$b" ] || { echo "dnsfence-target: $BIN/$b missing (cargo build --release)" >&2; exit 1; }
done

# An ApplicationNetworkPolicy allowing every allowlist entry (exact names and *.suffix).
{
  cat <<YAML
apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata:
  name: bench-allowlist
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: dnsperf
  policyTypes:
  - Egress
  egress:
  - to:
    - domainNames:
YAML
  awk '{ sub(/#.*/, ""); gsub(/[ \t\r]/, ""); if ($0 == "") next; sub(/\.$/, ""); printf "      - \"%s\"\n", tolower($0) }' "$ALLOWLIST"
  cat <<YAML
    ports:
    - protocol: TCP
      port: 443
YAML
} > "$W/policy.yaml"

taskset -c "$SIDE_CPU" "$BIN/dnsfence-policy-store" --data-dir "$W/store" --listen "" \
  --unix-socket "$W/store.sock" > "$W/store.log" 2>&1 &
store=$!
export DNSFENCE_STORE="unix://$W/store.sock"
for _ in $(seq 100); do [ -S "$W/store.sock" ] && break; sleep 0.05; done
"$BIN/dnsfence" apply -f "$W/policy.yaml" > "$W/apply.log"
"$BIN/dnsfence" workload add default/dnsperf --ip 127.0.0.1 -l app=dnsperf --node bench-node >> "$W/apply.log"

taskset -c "$SIDE_CPU" "$BIN/grant-sink" --gateway "unix://$W/grants.sock" --node bench-node \
  > "$W/sink.log" 2>&1 &
sink=$!

# After the exec below this shell's pid is the gateway's: stop the helpers when it is gone.
# `tail --pid` checks once a second without starting a process: a `sleep` started every half
# second (fork, exec, on any core) stalled the measured run for a millisecond or two each time.
gateway=$$
( taskset -c "$SIDE_CPU" tail --pid="$gateway" -f /dev/null
  kill "$sink" "$store" 2>/dev/null; sleep 1; rm -rf "$W" ) > /dev/null 2>&1 &

# The harness gives the server one core, as it gives hickory-dns `--workers 1`: one thread
# (WORKER_THREADS=N to try more).
exec "$BIN/dnsfence-resolver-gateway" \
  --dns-listen "127.0.0.1:$PORT" --upstream "$UPSTREAM" \
  --store "unix://$W/store.sock" --grpc-listen "unix://$W/grants.sock" --metrics-listen "${METRICS_LISTEN:-}" \
  --worker-threads "${WORKER_THREADS:-1}" --udp-workers 1 --log-format text

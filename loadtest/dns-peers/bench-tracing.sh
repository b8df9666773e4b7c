#!/usr/bin/env bash
# The cost of tracing: gateway QPS with OpenTelemetry export off and on, in the peer harness's
# setup (dnsfence-target.sh: real store, policy, grant subscriber; the gateway alone on its
# core with one tokio worker; dnsperf and the upstream on the other core).
#
#   sudo loadtest/dns-peers/bench-tracing.sh
#   MODES="off default" WORKLOADS=mix ROUNDS=5 sudo loadtest/dns-peers/bench-tracing.sh
#
# Modes (each round runs the harness once per mode, target only, gateway restarted per run):
#   off        OTEL_EXPORTER_OTLP_ENDPOINT unset: no OpenTelemetry layer is installed
#   default    exporting to otlp-sink with the default sampler (OTEL_TRACES_SAMPLER unset)
#   always_on  every query traced (OTEL_TRACES_SAMPLER=parentbased_always_on)
#   ratio      OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=$RATIO
#
# otlp-sink, an OTLP/gRPC receiver that counts spans, runs on the client's core, so the
# gateway's core pays for making, batching and sending spans, not for receiving them.
# Prints one table: per mode and workload the median QPS of the saturating runs, the server's
# CPU per query, the spans the sink received and the cost relative to `off`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODES=${MODES:-"off default always_on ratio"}
RATIO=${RATIO:-0.01}
export WORKLOADS=${WORKLOADS:-"mix uniq"}
ROUNDS=${ROUNDS:-3}
export CONFIGS=" "   # no peers: the target only (empty would mean the default set)
# BUILD=0: use the binaries in DNSFENCE_BIN as they are
[ "${BUILD:-1}" = 0 ] || "$HERE/build-dnsfence.sh" otlp-sink
BIN=${DNSFENCE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
export DNSFENCE_BIN=$BIN

W=$(mktemp -d "${TMPDIR:-/tmp}/bench-tracing.XXXXXX")
taskset -c "${CLIENT_CPU:-0}" "$BIN/otlp-sink" --listen "unix://$W/otlp.sock" > "$W/sink.log" 2>&1 &
sink=$!
trap 'kill "$sink" 2>/dev/null; wait "$sink" 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do [ -S "$W/otlp.sock" ] && break; sleep 0.05; done
spans() { sleep 1.1; tail -1 "$W/sink.log" | sed -n 's/^spans=\([0-9]*\).*/\1/p' | grep . || echo 0; }

SUMMARY=$W/summary.tsv
: > "$SUMMARY"
# Rounds of one run per mode, modes interleaved, so a change in background load hits every
# mode alike instead of one mode's block of runs.
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG
    case $mode in
      off) ;;
      default) export OTEL_EXPORTER_OTLP_ENDPOINT="unix://$W/otlp.sock" ;;
      always_on) export OTEL_EXPORTER_OTLP_ENDPOINT="unix://$W/otlp.sock" OTEL_TRACES_SAMPLER=parentbased_always_on ;;
      ratio) export OTEL_EXPORTER_OTLP_ENDPOINT="unix://$W/otlp.sock" \
               OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$RATIO" ;;
      *) echo "unknown mode $mode (off, default, always_on, ratio)" >&2; exit 2 ;;
    esac
    before=$(spans)
    echo "==> round $round, mode $mode" >&2
    WORK="$W/$mode-$round" TARGET_CMD="$HERE/dnsfence-target.sh" RUNS=1 "$HERE/run.sh" 5400 \
      > "$W/$mode-$round.report" 2> "$W/$mode-$round.log" || { cat "$W/$mode-$round.log" >&2; exit 1; }
    sleep 6   # the batch processor's last export (OTEL_BSP_SCHEDULE_DELAY is 5 s)
    after=$(spans)
    res=$(ls "$W/$mode-$round"/results/*/results.tsv)
    # config workload mode run qps ... server_us_per_query (column 16), background load (19)
    awk -F'\t' -v m="$mode" -v s=$((after - before)) '$1 == "target" && $3 == "sat" { print m "\t" $2 "\t" $5 "\t" $16 "\t" s "\t" $19 }' "$res" >> "$SUMMARY"
  done
done

echo
echo "gateway with trace export: median of $ROUNDS saturating runs per mode and workload ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cpus)"
awk -F'\t' '
  { key = $1 SUBSEP $2; n[key]++; q[key, n[key]] = $3; u[key, n[key]] = $4; s[key] += $5; bg[key, n[key]] = $6
    if (!(($1) in seen)) { seen[$1] = 1; modes[++nm] = $1 }
    if (!(($2) in wseen)) { wseen[$2] = 1; loads[++nw] = $2 } }
  function median(arr, key, cnt,    i, j, t, v) {
    for (i = 1; i <= cnt; i++) v[i] = arr[key, i] + 0
    for (i = 1; i <= cnt; i++) for (j = i + 1; j <= cnt; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2 }
  END {
    printf "%-10s %-5s %9s %8s %10s %8s   %s\n", "mode", "load", "qps", "us/query", "spans", "cost", "runs: qps (background load %)"
    for (w = 1; w <= nw; w++) {
      base = median(q, "off" SUBSEP loads[w], n["off", loads[w]])
      for (m = 1; m <= nm; m++) {
        key = modes[m] SUBSEP loads[w]; if (!n[key]) continue
        med = median(q, key, n[key]); us = median(u, key, n[key]); runs = ""
        for (i = 1; i <= n[key]; i++) runs = runs q[key, i] " (" bg[key, i] ") "
        cost = (base > 0 && modes[m] != "off") ? sprintf("%+.1f%%", (base - med) * 100 / base) : "-"
        printf "%-10s %-5s %9d %8s %10s %8s   %s\n", modes[m], loads[w], med, us, s[key], cost, runs }
    } }' "$SUMMARY"
echo "spans: received by otlp-sink during the mode's runs (both workloads); cost: QPS lost against off (median against median)"

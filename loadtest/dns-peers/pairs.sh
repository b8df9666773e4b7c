#!/usr/bin/env bash
# Paired runs: the gateway against one peer, ROUNDS times, alternating which of the two goes
# first, and the ratio of each pair. On a shared host saturating runs move by ±15% from one
# minute to the next; pairs taken back to back, in both orders, compare the servers under the
# same conditions, and the spread of the ratios shows how far one run can be trusted.
#
#   sudo ./pairs.sh                                    # uniq against dnsdist without cache, 8 pairs
#   PEER=dnsdist-cache WORKLOAD=mix ROUNDS=6 sudo ./pairs.sh
#
# Prints one line per pair (QPS and server CPU µs per query of each, and their ratios: QPS
# gateway/peer, CPU peer/gateway, so > 1 is the gateway ahead for both) and the medians.
# Every knob of run.sh applies (DURATION, CLIENTS, ...); DNSFENCE_BIN picks the build
# (default: target/release, built first).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEER=${PEER:-dnsdist-nocache}
WORKLOAD=${WORKLOAD:-uniq}
ROUNDS=${ROUNDS:-8}
PORT=${TARGET_PORT:-5400}
[ -n "${DNSFENCE_BIN:-}" ] || "$HERE/build-dnsfence.sh"
export TARGET_CMD="$HERE/dnsfence-target.sh"
LOG=${TMPDIR:-/tmp}/dns-peers-pairs.$$.log
rows=()
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="$PEER target"; else order="target $PEER"; fi
  CONFIGS="$order" WORKLOADS="$WORKLOAD" RUNS=1 FIXED_WORKLOADS=" " "$HERE/run.sh" "$PORT" > "$LOG" 2>&1 ||
    { echo "pairs: run.sh failed, see $LOG" >&2; exit 1; }
  raw=$(sed -n 's/^raw outputs: //p' "$LOG" | tail -1)
  # results.tsv: config workload mode run qps ... us/q (column 16)
  row=$(awk -F'\t' -v peer="$PEER" -v first="${order%% *}" '
    $3 == "sat" && $1 == peer     { pq = $5; pu = $16 }
    $3 == "sat" && $1 == "target" { tq = $5; tu = $16 }
    END { printf "%s %s %s %s %s %.2f %.2f", first, pq, pu, tq, tu, tq / pq, pu / tu }' "$raw/results.tsv")
  rows+=("$row")
  read -r first pq pu tq tu rq ru <<< "$row"
  printf 'pair %2d (%-6s first): %-15s %7s qps %5s us/q | gateway %7s qps %5s us/q | qps ratio %s, cpu ratio %s\n' \
    "$round" "$([ "$first" = target ] && echo gateway || echo peer)" "$PEER" "$pq" "$pu" "$tq" "$tu" "$rq" "$ru"
done
printf '%s\n' "${rows[@]}" | awk -v n="$ROUNDS" -v peer="$PEER" -v w="$WORKLOAD" '
  { q[NR] = $6; c[NR] = $7; if ($6 >= 1) qa++; if ($7 >= 1) ca++; pq += $2; tq += $4; pu += $3; tu += $5 }
  function median(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
                                     return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END {
    printf "%s, %d pairs against %s: median qps ratio %.2f (gateway ahead in %d), median cpu ratio %.2f (gateway ahead in %d)\n",
      w, n, peer, median(q, n), qa + 0, median(c, n), ca + 0
    printf "means: %s %.0f qps %.2f us/q, gateway %.0f qps %.2f us/q\n", peer, pq / n, pu / n, tq / n, tu / n
  }'

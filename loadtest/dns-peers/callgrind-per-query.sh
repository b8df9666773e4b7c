#!/usr/bin/env bash
# User-space instructions per query of one server under callgrind: a count that does not
# move with the host's load, for comparing builds when saturation runs swing by ±15%.
#
#   ./callgrind-per-query.sh gateway [QUERIES]     # dnsfence (dnsfence-target.sh, DNSFENCE_BIN)
#   ./callgrind-per-query.sh dnsdist [QUERIES]     # dnsdist-nocache, as run.sh configures it
#
# Needs the data and configs of an earlier run.sh invocation (WORK, default /tmp/dns-peers)
# and valgrind. Sends 2,000 warm-up queries, then QUERIES (default 10,000) one-off names of
# the `uniq` workload at 2,000 qps (well below saturation: the count includes the idle
# scheduler work of a lightly loaded server), and prints instructions per answered query.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${WORK:-${TMPDIR:-/tmp}/dns-peers}
SERVER=${1:?gateway or dnsdist}
QUERIES=${2:-10000}
RUN=$WORK/run
DATA=$WORK/data
for f in "$RUN/knot.conf" "$RUN/dnsdist-nocache.conf" "$DATA/queries/uniq-1.txt" "$DATA/queries/uniq-2.txt"; do
  [ -e "$f" ] || { echo "callgrind-per-query: $f missing (run run.sh once first)" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "callgrind-per-query: valgrind missing (apt-get install valgrind)" >&2; exit 1; }
T=$(mktemp -d "${TMPDIR:-/tmp}/callgrind-per-query.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1; rm -rf "$T" "$HERE/.callgrind-target.sh"
}
trap cleanup EXIT

knotd -c "$RUN/knot.conf" > "$T/knot.log" 2>&1 & pids+=($!)
case "$SERVER" in
  gateway)
    PORT=5400
    # dnsfence-target.sh with the gateway under callgrind
    sed "s|^exec \"\$BIN/dnsfence-resolver-gateway\"|exec valgrind --tool=callgrind --callgrind-out-file=$T/callgrind.out \"\$BIN/dnsfence-resolver-gateway\"|" \
      "$HERE/dnsfence-target.sh" > "$HERE/.callgrind-target.sh"
    PORT=$PORT UPSTREAM=127.0.0.1:5300 ALLOWLIST="$HERE/allowlist.txt" \
      bash "$HERE/.callgrind-target.sh" > "$T/server.log" 2>&1 & pids+=($!)
    ;;
  dnsdist)
    PORT=5301
    ( cd "$RUN" && exec valgrind --tool=callgrind --callgrind-out-file="$T/callgrind.out" \
        dnsdist --supervised --disable-syslog -C "$RUN/dnsdist-nocache.conf" ) > "$T/server.log" 2>&1 & pids+=($!)
    ;;
  *) echo "callgrind-per-query: gateway or dnsdist, not $SERVER" >&2; exit 2 ;;
esac
probe=$(head -1 "$DATA/allow-exact.txt")
for _ in $(seq 120); do
  dnsperf -s 127.0.0.1 -p "$PORT" -d <(echo "$probe A") -n 1 -t 1 2>/dev/null | grep -q NOERROR && break
  sleep 0.5
done
vg=$(pgrep -f "callgrind-out-file=$T/callgrind.out" | head -1)
head -2000 "$DATA/queries/uniq-2.txt" > "$T/warm.txt"
head -"$QUERIES" "$DATA/queries/uniq-1.txt" > "$T/queries.txt"
dnsperf -s 127.0.0.1 -p "$PORT" -d "$T/warm.txt" -n 1 -Q 1000 -t 5 > /dev/null 2>&1
callgrind_control -z "$vg" > /dev/null 2>&1
dnsperf -s 127.0.0.1 -p "$PORT" -d "$T/queries.txt" -n 1 -Q 2000 -t 5 > "$T/dnsperf.txt" 2>&1
callgrind_control -d "$vg" > /dev/null 2>&1
sleep 1
completed=$(awk '/Queries completed/ { print $3 }' "$T/dnsperf.txt")
ir=$(callgrind_annotate "$T/callgrind.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "$SERVER: $completed queries answered, $ir instructions, $(( ir / completed )) per query"
if [ -n "${KEEP:-}" ]; then cp "$T/callgrind.out.1" "$KEEP"; echo "callgrind profile: $KEEP"; fi

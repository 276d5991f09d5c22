#!/usr/bin/env bash
# Starts per second on simulated nodes: one 50,000-child array vs 50
# batches of 1,000, fresh server each, alternating. Uses release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd
BIN=${BIN:-target/release/shepherd}
N=${N:-50000}
NODES=${NODES:-1000}
TOKEN=bench-admin-token-0123456789
run() {
  local mode=$1 dir; dir=$(mktemp -d)
  local port=$((20000 + RANDOM % 20000))
  SHEPHERD_LOG=warn SHEPHERD_ADMIN_TOKEN=$TOKEN SHEPHERD_CONFIG=$dir/cli.toml $BIN server --listen 127.0.0.1:$port --data-dir $dir/data --join-token jt > $dir/server.out 2>$dir/server.log &
  local server=$!
  sleep 2
  SHEPHERD_LOG=warn $BIN nodesim --join http://127.0.0.1:$port --join-token jt --nodes $NODES --max-tasks 16 --cpu 64000 --memory 262144 --run-ms 100..300 --stats $dir/stats.json > /dev/null 2>&1 &
  local sim=$!
  for i in $(seq 1 120); do
    n=$(curl -s -H "authorization: Bearer $TOKEN" http://127.0.0.1:$port/v1/nodes | python3 -c 'import sys,json; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    [ "$n" -ge "$NODES" ] && break; sleep 1
  done
  local t0; t0=$(date +%s.%N)
  if [ "$mode" = array ]; then
    curl -s -o /dev/null -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "{\"image\":\"busybox\",\"command\":[\"true\"],\"resources\":{\"cpu_millicores\":100,\"memory_mib\":64},\"array\":{\"size\":$N}}" http://127.0.0.1:$port/v1/tasks
  else
    body=$(python3 -c "import json; print(json.dumps({'tasks':[{'image':'busybox','command':['true'],'resources':{'cpu_millicores':100,'memory_mib':64}}]*1000}))")
    for b in $(seq 1 $((N/1000))); do curl -s -o /dev/null -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body" http://127.0.0.1:$port/v1/tasks/batch; done
  fi
  local t1; t1=$(date +%s.%N)
  while true; do
    s=$(python3 -c 'import json; print(json.load(open("'$dir'/stats.json"))["starts_accepted"])' 2>/dev/null || echo 0)
    [ "$s" -ge "$N" ] && break; sleep 0.2
  done
  local t2; t2=$(date +%s.%N)
  python3 -c "print('$mode: submitted in %.2f s, all $N started after %.2f s: %.0f starts/s' % ($t1-$t0, $t2-$t0, $N/($t2-$t0)))"
  kill $sim $server; wait $sim $server 2>/dev/null || true
  rm -rf $dir
}
for round in 1 2; do
  if [ $((round % 2)) = 1 ]; then run array; run batches; else run batches; run array; fi
done

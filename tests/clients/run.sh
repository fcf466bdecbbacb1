#!/usr/bin/env bash
# Starts `keel serve` on a free loopback port with a fresh data directory, runs each client's
# round-trip, consumer-group and log-lifecycle scripts against it, then stops it with SIGTERM and checks it exits cleanly; then
# the same against a three-node cluster.
set -euo pipefail
keel="${1:?usage: run.sh path/to/keel}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Retention runs every half second (Kafka checks every five minutes): the lifecycle script
# waits for it.
"$keel" serve --listen "127.0.0.1:$port" --data-dir "$work/data" \
  --retention-check-interval-ms 500 2> "$work/keel.log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; cat "$work/keel.log" | tail -n 20' ERR
for _ in $(seq 1 200); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
bootstrap="127.0.0.1:$port"
timeout 120 bash "$here/kcat_roundtrip.sh" "$bootstrap"
timeout 120 python3 "$here/kafka_python_roundtrip.py" "$bootstrap"
timeout 120 python3 "$here/confluent_kafka_roundtrip.py" "$bootstrap"
timeout 120 bash "$here/kcat_group.sh" "$bootstrap"
timeout 180 python3 "$here/group_clients.py" "$bootstrap"
timeout 180 python3 "$here/lifecycle_clients.py" "$bootstrap"
kill -TERM $pid
wait $pid
echo "keel exited cleanly after SIGTERM"

# The same clients against a three-node cluster (topics get three replicas).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
voters=""
for id in 1 2 3; do voters="$voters${voters:+,}$id@127.0.0.1:$(free_port)"; done
pids=()
addrs=()
for id in 1 2 3; do
  p="$(free_port)"
  "$keel" serve --node-id "$id" --voters "$voters" --listen "127.0.0.1:$p" \
    --data-dir "$work/node-$id" --retention-check-interval-ms 500 2> "$work/node-$id.log" &
  pids+=($!)
  addrs+=("127.0.0.1:$p")
done
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; tail -n 20 "$work"/node-*.log' ERR
bootstrap="$(IFS=,; echo "${addrs[*]}")"
# Until the quorum has a controller and every broker registered.
for _ in $(seq 1 200); do
  listed="$(kcat -b "$bootstrap" -L -m 2 2>/dev/null || true)"
  if grep -q "3 brokers" <<< "$listed" && grep -q "(controller)" <<< "$listed"; then break; fi
  sleep 0.1
done
timeout 120 bash "$here/kcat_roundtrip.sh" "$bootstrap"
timeout 120 python3 "$here/kafka_python_roundtrip.py" "$bootstrap"
timeout 120 python3 "$here/confluent_kafka_roundtrip.py" "$bootstrap"
timeout 120 bash "$here/kcat_group.sh" "$bootstrap"
timeout 180 python3 "$here/group_clients.py" "$bootstrap"
timeout 180 python3 "$here/lifecycle_clients.py" "$bootstrap"
kill -TERM "${pids[@]}"
for pid in "${pids[@]}"; do wait "$pid"; done
echo "the three-node cluster exited cleanly after SIGTERM"
rm -rf "$work"

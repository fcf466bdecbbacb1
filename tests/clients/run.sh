#!/usr/bin/env bash
# Starts `keel serve` on a free loopback port with a fresh data directory, runs each client's
# round-trip script against it, then stops it with SIGTERM and checks it exits cleanly.
set -euo pipefail
keel="${1:?usage: run.sh path/to/keel}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$keel" serve --listen "127.0.0.1:$port" --data-dir "$work/data" 2> "$work/keel.log" &
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
kill -TERM $pid
wait $pid
echo "keel exited cleanly after SIGTERM"
rm -rf "$work"

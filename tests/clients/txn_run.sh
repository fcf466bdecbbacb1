#!/usr/bin/env bash
# Transactions through confluent-kafka against keel: one node, then a three-node cluster,
# each with a fresh work directory (keel_nodes.sh). txn_clients.py commits and aborts in
# turn under read_committed and read_uncommitted consumers; eos_clients.py runs
# consume-transform-produce with send_offsets_to_transaction, with the node coordinating its
# transactions SIGKILLed and restarted midway. The nodes are stopped with SIGTERM at the end
# of each setup and must exit cleanly.
#
#   txn_run.sh path/to/keel
set -Eeuo pipefail
export KEEL="${1:?usage: txn_run.sh path/to/keel}"
here="$(cd "$(dirname "$0")" && pwd)"
export KEEL_WORK="$(mktemp -d)"
node="$here/keel_nodes.sh"
trap '"$node" killall; tail -n 20 "$KEEL_WORK"/node-*.log' ERR

kill_run() {
  echo "--- eos_clients.py, killing node $1"
  timeout 300 python3 "$here/eos_clients.py" "$("$node" bootstrap)" \
    --kill-cmd "$node kill $1" --restart-cmd "$node start $1"
  "$node" wait
}

"$node" init single
"$node" start 1
"$node" wait
timeout 300 python3 "$here/txn_clients.py" "$("$node" bootstrap)"
kill_run "{coordinator}"
"$node" stopall
echo "one node: passed, and it exited cleanly after SIGTERM"

"$node" init cluster
for id in 1 2 3; do "$node" start "$id"; done
"$node" wait
timeout 300 python3 "$here/txn_clients.py" "$("$node" bootstrap)"
kill_run "{coordinator}"
"$node" stopall
echo "three nodes: passed, and they exited cleanly after SIGTERM"
rm -rf "$KEEL_WORK"

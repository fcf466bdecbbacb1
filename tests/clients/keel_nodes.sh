#!/usr/bin/env bash
# Starts, kills and stops keel nodes of a test setup, remembering each node's command line and
# pid under a work directory, so a test script can kill a node (SIGKILL) and bring it back on
# the same port with the same data directory.
#
#   keel_nodes.sh init single|cluster   fresh work directory; free ports for one node or three
#   keel_nodes.sh start ID              start node ID (again), in the background; waits for its port
#   keel_nodes.sh kill ID               SIGKILL node ID
#   keel_nodes.sh stop ID               SIGTERM node ID and wait for it to exit
#   keel_nodes.sh stopall               SIGTERM every node still running (SIGKILL after 10 s)
#   keel_nodes.sh killall               SIGKILL every node still running
#   keel_nodes.sh bootstrap             the bootstrap servers of the setup
#   keel_nodes.sh wait                  until every broker is registered (and, for a cluster, a controller)
#
# KEEL (default target/debug/keel) is the binary; KEEL_WORK (default /tmp/keel-nodes) the work
# directory: node-ID.cmd, node-ID.pid, node-ID.log, data-ID/.
set -euo pipefail
keel="${KEEL:-target/debug/keel}"
work="${KEEL_WORK:-/tmp/keel-nodes}"
cmd="${1:?usage: keel_nodes.sh init|start|kill|stop|stopall|killall|bootstrap|wait [ARG]}"

# N distinct free ports (all bound at once, so none is handed out twice).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

ids() { for f in "$work"/node-*.cmd; do [ -e "$f" ] && basename "$f" .cmd | sed 's/node-//'; done; }

alive() {
  local pidfile="$work/node-$1.pid"
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_of() { sed -n 's/.*--listen 127.0.0.1:\([0-9]*\).*/\1/p' "$work/node-$1.cmd"; }

case "$cmd" in
  init)
    mode="${2:?init single|cluster}"
    rm -rf "$work"
    mkdir -p "$work"
    if [ "$mode" = single ]; then
      read -r p <<< "$(free_ports 1)"
      echo "--listen 127.0.0.1:$p --data-dir $work/data-1 --retention-check-interval-ms 500" > "$work/node-1.cmd"
    else
      read -r -a ports <<< "$(free_ports 6)"
      voters="1@127.0.0.1:${ports[0]},2@127.0.0.1:${ports[1]},3@127.0.0.1:${ports[2]}"
      for id in 1 2 3; do
        p="${ports[$((id + 2))]}"
        echo "--node-id $id --voters $voters --listen 127.0.0.1:$p --data-dir $work/data-$id --retention-check-interval-ms 500" > "$work/node-$id.cmd"
      done
    fi
    ;;
  start)
    id="${2:?start ID}"
    if alive "$id"; then echo "node $id already running" >&2; exit 1; fi
    # shellcheck disable=SC2046
    setsid "$keel" serve $(cat "$work/node-$id.cmd") >> "$work/node-$id.log" 2>&1 < /dev/null &
    echo $! > "$work/node-$id.pid"
    p="$(port_of "$id")"
    for _ in $(seq 1 200); do
      alive "$id" || { echo "node $id exited" >&2; tail -n 20 "$work/node-$id.log" >&2; exit 1; }
      if (echo > "/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        # Still running once it listens (not someone else's port).
        sleep 0.1
        alive "$id" && exit 0
      fi
      sleep 0.05
    done
    echo "node $id is not listening on $p" >&2
    exit 1
    ;;
  kill)
    id="${2:?kill ID}"
    if alive "$id"; then
      kill -9 "$(cat "$work/node-$id.pid")"
      echo "--- SIGKILL at $(date +%T.%N)" >> "$work/node-$id.log"
    fi
    ;;
  stop)
    id="${2:?stop ID}"
    if alive "$id"; then
      pid="$(cat "$work/node-$id.pid")"
      kill -TERM "$pid"
      for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.05; done
      echo "node $id still running 10 s after SIGTERM" >&2
      exit 1
    fi
    ;;
  stopall)
    status=0
    for id in $(ids); do
      alive "$id" && kill -TERM "$(cat "$work/node-$id.pid")"
    done
    for id in $(ids); do
      for _ in $(seq 1 200); do alive "$id" || break; sleep 0.05; done
      if alive "$id"; then
        echo "node $id still running 10 s after SIGTERM; killed" >&2
        kill -9 "$(cat "$work/node-$id.pid")"
        status=1
      fi
    done
    exit $status
    ;;
  killall)
    for id in $(ids); do alive "$id" && kill -9 "$(cat "$work/node-$id.pid")"; done
    true
    ;;
  bootstrap)
    list=""
    for id in $(ids); do list="$list${list:+,}127.0.0.1:$(port_of "$id")"; done
    echo "$list"
    ;;
  wait)
    n="$(ids | wc -l)"
    bootstrap="$("$0" bootstrap)"
    for _ in $(seq 1 300); do
      listed="$(kcat -b "$bootstrap" -L -m 2 2>/dev/null || true)"
      if grep -q " $n brokers" <<< "$listed" && { [ "$n" = 1 ] || grep -q "(controller)" <<< "$listed"; }; then exit 0; fi
      sleep 0.1
    done
    echo "the brokers never all registered" >&2
    exit 1
    ;;
  *)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac

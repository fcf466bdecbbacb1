#!/usr/bin/env bash
# Produce 1,000 keyed records with kcat, consume them back, compare.
set -euo pipefail
bootstrap="${1:-127.0.0.1:9092}"
topic="kcat-$RANDOM$RANDOM"
sent="$(mktemp)"; received="$(mktemp)"
for i in $(seq 0 999); do echo "key-$i:value-$i"; done > "$sent"
kcat -b "$bootstrap" -t "$topic" -P -K: -X acks=all < "$sent"
kcat -b "$bootstrap" -t "$topic" -C -o beginning -c 1000 -e -q -f '%k:%s\n' > "$received"
diff "$sent" "$received"
echo "kcat: $(wc -l < "$received") records round-tripped through $topic"

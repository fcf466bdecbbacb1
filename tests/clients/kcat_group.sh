#!/usr/bin/env bash
# kcat's balanced consumer (-G): 300 records consumed through a group, its offsets committed
# as it closes; the same group started again reads nothing more, a new record only.
set -euo pipefail
bootstrap="${1:?usage: kcat_group.sh host:port[,host:port...]}"
topic="kcat-group-$RANDOM$RANDOM"
group="kcat-group-$RANDOM"
seq 1 300 | kcat -b "$bootstrap" -t "$topic" -P -K: -X topic.metadata.refresh.interval.ms=100
got="$(timeout 60 kcat -b "$bootstrap" -G "$group" -X auto.offset.reset=earliest -c 300 -q "$topic" | wc -l)"
[ "$got" -eq 300 ] || { echo "kcat -G consumed $got of 300 records"; exit 1; }
echo 301 | kcat -b "$bootstrap" -t "$topic" -P
# From the committed offsets on: only the new record (-e: stop at the end).
again="$(timeout 60 kcat -b "$bootstrap" -G "$group" -X auto.offset.reset=earliest -e -q "$topic")"
[ "$again" = "301" ] || { echo "kcat -G after its commits read: $again"; exit 1; }
echo "kcat -G: 300 records through group $group, committed, resumed at the next"

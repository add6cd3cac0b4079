#!/usr/bin/env bash
# Runs bench/conf against `portcullis dev` (core and edge in one process):
# one meeting that N anonymous guests join through the edge over TLS, then
# M meetings of 5. See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-1000}
MEETINGS=${MEETINGS:-300}
PER=${PER:-5}
CONCURRENCY=${CONCURRENCY:-32}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true

go build -o "$WORK/" ./cmd/portcullis ./bench/conf
# All load comes from 127.0.0.1: the edge's per-source limits are lifted.
python3 - "$WORK" <<'PY'
import sys
w = sys.argv[1]
s = open("configs/dev.yaml").read()
s = s.replace("    home_domains: [example.test]\n", "    home_domains: [example.test]\n    limits: {requests_per_second: 1000000, burst: 1000000, connections_per_address: 100000, max_connections: 100000}\n")
open(w + "/dev.yaml", "w").write(s)
PY
"$WORK/portcullis" dev --data "$WORK/dev" --config "$WORK/dev.yaml" 2>"$WORK/dev.log" &
PC=$!
for _ in $(seq 50); do grep -q "portcullis dev ready" "$WORK/dev.log" 2>/dev/null && break; sleep 0.2; done
create() { "$WORK/portcullis" meeting create --data "$WORK/dev" --organizer "$1" --admission anonymous; }

echo "== one meeting of $N" >&2
out=$(create sip:alice@example.test)
uri=$(echo "$out" | head -1); key=$(echo "$out" | grep -o 'key [0-9]*' | cut -d' ' -f2)
"$WORK/conf" -ca "$WORK/dev/pki/ca.crt" -uri "$uri" -key "$key" -n "$N" -concurrency "$CONCURRENCY" -pids "$PC" 2>>"$WORK/conf.log" | tee "$WORK/one.json"

echo "== $MEETINGS meetings of $PER" >&2
: >"$WORK/meetings.txt"
for i in $(seq "$MEETINGS"); do
	out=$(create "sip:$(echo alice bob carol | cut -d' ' -f$(( (i % 3) + 1 )))@example.test")
	echo "$(echo "$out" | head -1) $(echo "$out" | grep -o 'key [0-9]*' | cut -d' ' -f2)" >>"$WORK/meetings.txt"
done
"$WORK/conf" -ca "$WORK/dev/pki/ca.crt" -meetings "$WORK/meetings.txt" -n "$PER" -concurrency "$CONCURRENCY" -pids "$PC" 2>>"$WORK/conf.log" | tee "$WORK/many.json"

#!/usr/bin/env bash
# A/B of two revisions of Portcullis on the SIP path: builds each (git
# worktrees), then alternates them ROUNDS times, each round a fresh
# `portcullis dev` under the load tool at one fixed rate, and prints server
# CPU per operation. Usage: bench/sip/ab.sh REV_A REV_B (e.g. HEAD~1 HEAD).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 2 ] || { echo "usage: $0 REV_A REV_B" >&2; exit 2; }
MODE=${MODE:-call}; RATE=${RATE:-800}; STEP=${STEP:-10s}; ROUNDS=${ROUNDS:-2}; WORKERS=${WORKERS:-128}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; for d in "$WORK"/src-*; do [ -d "$d" ] && git worktree remove --force "$d"; done; rm -rf "$WORK"' EXIT
for side in a b; do
	rev=$1; [ $side = b ] && rev=$2
	git worktree add -q --detach "$WORK/src-$side" "$rev"
	(cd "$WORK/src-$side" && go build -o "$WORK/bin-$side/" ./cmd/portcullis ./bench/sip)
done
# Equal terms with Kamailio: MD5 digest, per-source limits lifted.
python3 bench/sip/devconfig.py "$WORK/dev.yaml"
one() { # side
	local bin=$WORK/bin-$1 data=$WORK/dev-$1-$RANDOM
	"$bin/portcullis" dev --data "$data" --config "$WORK/dev.yaml" 2>"$WORK/dev.log" &
	local pc=$!
	for _ in $(seq 50); do grep -q "portcullis dev ready" "$WORK/dev.log" 2>/dev/null && break; sleep 0.2; done
	local a b
	a=$(awk '$1=="sip:alice@example.test"{print $2}' "$data/dev-users.txt")
	b=$(awk '$1=="sip:bob@example.test"{print $2}' "$data/dev-users.txt")
	"$bin/sip" -server 127.0.0.1:15061 -server-name edge.dev.internal -ca "$data/pki/ca.crt" -caller-password "$a" -callee-password "$b" \
		-mode "$MODE" -step "$STEP" -workers "$WORKERS" -pids "$pc" -label "$1" -rates "$RATE" \
		-callee-server 127.0.0.1:25063 -callee-server-name core.dev.internal
	kill "$pc"; wait "$pc" 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
	for side in a b; do
		one $side | python3 -c "
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    ops = d['completed_per_sec'] * float('$STEP'[:-1])
    print(f\"{d['label']}  {d['offered_per_sec']}/s  completed {d['completed_per_sec']:.0f}/s  failed {d['failed_pct']:.2f} %  p99 {d['p99_ms']:.1f} ms  server CPU {1000 * d['server_cpu_seconds'] / max(ops, 1):.3f} ms per operation\" + (f\"  failures: {d['errors']}\" if d.get('errors') else ''))"
	done
done

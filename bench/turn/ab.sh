#!/usr/bin/env bash
# A/B of two revisions of the edge's relay: builds each (git worktrees),
# starts both edges side by side on loopback (relay only, as run.sh), and
# runs the load tool against them ROUNDS times, the order swapped every
# round, printing relayed packets per server CPU-second and B/A per round.
# Usage: bench/turn/ab.sh REV_A REV_B (e.g. HEAD~1 HEAD).
# RATES: comma list of offered loads, "max" for closed loop (default max).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 2 ] || { echo "usage: $0 REV_A REV_B" >&2; exit 2; }
SESSIONS=${SESSIONS:-400}; DURATION=${DURATION:-8s}; ROUNDS=${ROUNDS:-6}; RATES=${RATES:-max}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; for d in "$WORK"/src-*; do [ -d "$d" ] && git worktree remove --force "$d"; done; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true
for side in a b; do
	rev=$1; [ $side = b ] && rev=$2
	git worktree add -q --detach "$WORK/src-$side" "$rev"
	(cd "$WORK/src-$side" && go build -o "$WORK/bin-$side/" ./cmd/portcullis-edge)
done
go build -o "$WORK/" ./cmd/portcullis ./bench/turn
"$WORK/portcullis" pki init --dir "$WORK/pki" >/dev/null
"$WORK/portcullis" pki issue --dir "$WORK/pki" --name edge.bench --san edge.bench --san 127.0.0.1 --server --client >/dev/null
"$WORK/portcullis" turn-cred --new-secret "$WORK/turn.secret" >/dev/null
SECRET=$(cat "$WORK/turn.secret")
config() { # side port port_min port_max
	cat > "$WORK/$1.yaml" <<YAML
log: {level: warn}
metrics: {listen: 127.0.0.1:0}
internal: {listen: 127.0.0.1:0, hostname: edge.bench, trusted_cores: [core.bench]}
tls: {ca_file: pki/ca.crt, cert_file: pki/edge.bench.crt, key_file: pki/edge.bench.key}
core: {address: 127.0.0.1:9, server_name: core.bench}
turn:
  enabled: true
  realm: example.test
  secret_file: turn.secret
  listen_udp: [127.0.0.1:$2]
  udp_sockets: $(nproc)
  relay: {bind_ipv4: 127.0.0.1, port_min: $3, port_max: $4}
  allowed_peers: [127.0.0.1/32]
  quota: {allocations_per_user: 10, total_allocations: 100000}
  unauthenticated: {per_second: 100000, burst: 100000}
YAML
}
config a 23478 40000 44999
config b 24478 45000 49999
"$WORK/bin-a/portcullis-edge" --config "$WORK/a.yaml" 2>"$WORK/a.log" &
PID_A=$!
"$WORK/bin-b/portcullis-edge" --config "$WORK/b.yaml" 2>"$WORK/b.log" &
PID_B=$!
sleep 1.5
for phase in ${RATES//,/ }; do
	extra=(); [ "$phase" != max ] && extra=(-rate "$phase")
	for r in $(seq 1 "$ROUNDS"); do
		order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
		for side in $order; do
			if [ $side = a ]; then port=23478 pid=$PID_A; else port=24478 pid=$PID_B; fi
			"$WORK/turn" -server "127.0.0.1:$port" -secret "$SECRET" -sessions "$SESSIONS" -duration "$DURATION" \
				-pid "$pid" -label "$side" "${extra[@]}" >"$WORK/$side-$phase-$r.json"
		done
		python3 - "$WORK/a-$phase-$r.json" "$WORK/b-$phase-$r.json" "$phase" "$r" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
k = "relayed_packets_per_server_cpu_second"
print(f"{sys.argv[3]} round {sys.argv[4]}: packets per CPU-second A {a[k]:.0f} B {b[k]:.0f} B/A {b[k] / a[k]:.3f}"
      f"  packets/s A {a['relayed_pps']:.0f} B {b['relayed_pps']:.0f}  loss A {a['loss_pct']:.2f} % B {b['loss_pct']:.2f} %")
PY
	done
done

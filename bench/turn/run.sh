#!/usr/bin/env bash
# Runs the TURN load tool against Portcullis (portcullis-edge) and coturn on
# loopback in one run and prints both and their ratios. See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

SESSIONS=${SESSIONS:-100}
DURATION=${DURATION:-10s}
RATE=${RATE:-20000}          # offered load(s) for the loss comparison (packets/s, all sessions; a comma list sweeps)
CLOSED=${CLOSED:-1}          # 0 skips the closed-loop phase
ROUNDS=${ROUNDS:-3}          # alternating rounds per phase; medians are reported
CORES=$(nproc)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true

command -v turnserver >/dev/null || { echo "coturn is not installed: apt-get install coturn" >&2; exit 1; }
go build -o "$WORK/" ./cmd/portcullis ./cmd/portcullis-edge ./bench/turn
P="$WORK/portcullis"

"$P" pki init --dir "$WORK/pki" >/dev/null
"$P" pki issue --dir "$WORK/pki" --name edge.bench --san edge.bench --san 127.0.0.1 --server --client >/dev/null
"$P" turn-cred --new-secret "$WORK/turn.secret" >/dev/null
SECRET=$(cat "$WORK/turn.secret")

cat > "$WORK/edge.yaml" <<YAML
log: {level: warn}
metrics: {listen: 127.0.0.1:0}
internal: {listen: 127.0.0.1:0, hostname: edge.bench, trusted_cores: [core.bench]}
tls: {ca_file: pki/ca.crt, cert_file: pki/edge.bench.crt, key_file: pki/edge.bench.key}
core: {address: 127.0.0.1:9, server_name: core.bench}   # no core: the relay alone is measured
turn:
  enabled: true
  realm: example.test
  secret_file: turn.secret
  listen_udp: [127.0.0.1:23478]
  udp_sockets: $CORES
  relay: {bind_ipv4: 127.0.0.1, port_min: 40000, port_max: 49999}
  allowed_peers: [127.0.0.1/32]
  quota: {allocations_per_user: 10, total_allocations: 100000}
  # every load session comes from 127.0.0.1: lift the per-source 401 limit
  unauthenticated: {per_second: 100000, burst: 100000}
YAML

GOMAXPROCS=${EDGE_GOMAXPROCS:-} "$WORK/portcullis-edge" --config "$WORK/edge.yaml" 2>"$WORK/edge.log" &
PORTCULLIS_PID=$!
turnserver -n --listening-ip=127.0.0.1 --listening-port=33478 --relay-ip=127.0.0.1 \
	--min-port=50000 --max-port=59999 --use-auth-secret --static-auth-secret="$SECRET" \
	--realm=example.test --allow-loopback-peers --relay-threads="$CORES" --no-tls --no-dtls \
	--no-cli --total-quota=0 --user-quota=0 --log-file=stdout --simple-log --no-stdout-log \
	>"$WORK/coturn.log" 2>&1 &
COTURN_PID=$!
sleep 1.5

load() { # label port pid extra-args...
	local label=$1 port=$2 pid=$3; shift 3
	"$WORK/turn" -server "127.0.0.1:$port" -secret "$SECRET" -sessions "$SESSIONS" -duration "$DURATION" \
		-pid "$pid" -label "$label" "$@"
}

# Each phase alternates the servers, ROUNDS times, the order swapped every
# round (p c, c p, ...), so that drift on the machine hits both alike.
PHASES=""
[ "$CLOSED" = 0 ] || PHASES=max
for r in ${RATE//,/ }; do PHASES="$PHASES rate$r"; done
for phase in $PHASES; do
	extra=(); [ "$phase" != max ] && extra=(-rate "${phase#rate}")
	echo "== $phase: $SESSIONS sessions, $DURATION, $ROUNDS rounds${extra[*]:+, ${extra[*]}}" >&2
	for r in $(seq 1 "$ROUNDS"); do
		order="p c"; [ $((r % 2)) -eq 0 ] && order="c p"
		for who in $order; do
			if [ "$who" = p ]; then
				load portcullis 23478 $PORTCULLIS_PID "${extra[@]}" >"$WORK/p-$phase-$r.json"
			else
				load coturn 33478 $COTURN_PID "${extra[@]}" >"$WORK/c-$phase-$r.json"
			fi
		done
	done
done

python3 - "$WORK" "$ROUNDS" $PHASES <<'PY'
import json, sys, os, statistics
w, rounds, phases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def rd(n): return json.load(open(os.path.join(w, n)))
rows = [
  ("relayed packets/s", "relayed_pps", "higher"),
  ("relayed packets per server CPU-second", "relayed_packets_per_server_cpu_second", "higher"),
  ("server CPU s per million packets", "server_cpu_seconds_per_million_packets", "lower"),
  ("loss %", "loss_pct", "lower"),
  ("RTT p50 (us)", "rtt_p50_us", "lower"),
  ("RTT p99 (us)", "rtt_p99_us", "lower"),
  ("allocations/s", "allocations_per_sec", "higher"),
]
for phase in phases:
    title = "closed loop" if phase == "max" else "offered load"
    p = [rd(f"p-{phase}-{r}.json") for r in range(1, rounds + 1)]
    c = [rd(f"c-{phase}-{r}.json") for r in range(1, rounds + 1)]
    offered = f", {p[0]['offered_pps']} pps offered" if p[0]['offered_pps'] else ""
    print(f"\n{title} ({p[0]['sessions']} sessions{offered}; median of {rounds} alternating rounds)")
    print(f"{'':40} {'portcullis':>12} {'coturn':>12} {'ratio':>7}  per-round ratios")
    for name, key, better in rows:
        a = statistics.median(x[key] for x in p)
        b = statistics.median(x[key] for x in c)
        ratio = (a / b) if b else float('nan')
        per = " ".join(f"{x[key] / y[key]:.2f}" if y[key] else "nan" for x, y in zip(p, c))
        print(f"{name:40} {a:12.2f} {b:12.2f} {ratio:7.2f}  {per}  ({better} is better)")
    if phase == phases[0]:
        # Only the first round runs on a fresh server: later rounds reuse
        # memory the previous one freed.
        for name, key in (("server KB per allocation (first round)", "server_kb_per_allocation"),
                          ("server descriptors per allocation", "server_fds_per_allocation"),
                          ("machine slab KB per allocation", "machine_slab_kb_per_allocation")):
            a, b = p[0].get(key, 0), c[0].get(key, 0)
            ratio = f"{a / b:7.2f}" if b else "    nan"
            print(f"{name:40} {a:12.2f} {b:12.2f} {ratio}  (lower is better)")
        print("  (RSS holds no kernel memory. The slab figure is machine-wide: it includes the load tool's own socket per session, alike for both, and moves with reclaimable caches, so it is noisy; README.md has it read per slab cache)")
PY

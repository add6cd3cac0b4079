#!/usr/bin/env bash
# Runs bench/sip's load tool against Portcullis (the Access Edge path: edge
# over mutual TLS to the core, `portcullis dev`) and against Kamailio as an
# equivalent stateful, record-routing TLS proxy, one after the other on the
# same machine, and prints both and their ratios. See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

MSG_RATES=${MSG_RATES:-250,500,1000,1500,2000}
CALL_RATES=${CALL_RATES:-50,100,200,400,600}
STEP=${STEP:-5s}
WORKERS=${WORKERS:-128}
IDLE=${IDLE:-2000}
CORES=$(nproc)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/kam.pid" ] && kill "$(cat "$WORK/kam.pid")" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true
command -v kamailio >/dev/null || { echo "kamailio is not installed: apt-get install kamailio kamailio-tls-modules" >&2; exit 1; }

go build -o "$WORK/" ./cmd/portcullis ./bench/sip
# Equal terms with Kamailio: MD5 digest, per-source limits lifted.
python3 bench/sip/devconfig.py "$WORK/dev.yaml"
"$WORK/portcullis" dev --data "$WORK/dev" --config "$WORK/dev.yaml" 2>"$WORK/dev.log" &
PC=$!
for _ in $(seq 50); do grep -q "portcullis dev ready" "$WORK/dev.log" 2>/dev/null && break; sleep 0.2; done
A=$(awk '$1=="sip:alice@example.test"{print $2}' "$WORK/dev/dev-users.txt")
B=$(awk '$1=="sip:bob@example.test"{print $2}' "$WORK/dev/dev-users.txt")
PKI="$WORK/dev/pki"
printf '[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\nprivate_key = %s\ncertificate = %s\n\n[client:default]\nverify_certificate = no\nrequire_certificate = no\n' \
	"$PKI/edge.dev.internal.key" "$PKI/edge.dev.internal.crt" > "$WORK/tls.cfg"
sed -e "s|@PORT@|35061|; s|@TLSCFG@|$WORK/tls.cfg|; s|@ALICE@|$A|; s|@BOB@|$B|; s|@CHILDREN@|$CORES|g" bench/sip/kamailio.cfg.in > "$WORK/kamailio.cfg"
# Production-sized memory: with the default 64 MB of shared memory its TLS
# layer refuses work under load ("not enough memory for safe operation").
kamailio -DD -E -m 1024 -M 16 -f "$WORK/kamailio.cfg" -P "$WORK/kam.pid" -w "$WORK" 2>"$WORK/kam.log" &
sleep 2
KP=$(cat "$WORK/kam.pid")

gen() { # label server pid mode extra...
	local label=$1 server=$2 pid=$3 mode=$4; shift 4
	"$WORK/sip" -server "$server" -server-name edge.dev.internal -ca "$PKI/ca.crt" -caller-password "$A" -callee-password "$B" \
		-mode "$mode" -step "$STEP" -workers "$WORKERS" -pids "$pid" -label "$label" "$@"
}
# Idle memory first, while the heap is steady, and for Portcullis only:
# Kamailio 5.6.3's tls module crashes (double free in tls_init.c) after about
# 520 TLS connections opened in a row, and keeps its connections in
# preallocated shared memory that RSS does not show.
echo "== portcullis idle" >&2
gen portcullis 127.0.0.1:15061 "$PC" idle -conns "$IDLE" -metrics "http://127.0.0.1:19100/metrics" >"$WORK/portcullis-idle.json"
# The callee: by default an internal user registered on the core's users
# listener (a remote user's request crosses the edge, then the core, to a
# colleague inside: the Access Edge path). CALLEE=edge registers it through
# the edge as well (a remote user to a remote user: the edge is crossed
# twice). Kamailio's callee registers with Kamailio, its only hop.
PC_CALLEE=(-callee-server 127.0.0.1:25063 -callee-server-name core.dev.internal)
[ "${CALLEE:-inside}" = edge ] && PC_CALLEE=()
for side in "portcullis 127.0.0.1:15061 $PC" "kamailio 127.0.0.1:35061 $KP"; do
	set -- $side
	extra=()
	[ "$1" = portcullis ] && extra=("${PC_CALLEE[@]}")
	echo "== $1" >&2
	gen "$1" "$2" "$3" message -rates "$MSG_RATES" "${extra[@]}" >"$WORK/$1-message.json"
	gen "$1" "$2" "$3" call -rates "$CALL_RATES" "${extra[@]}" >"$WORK/$1-call.json"
	gen "$1" "$2" "$3" connect -workers 8 >"$WORK/$1-connect.json"
done

python3 - "$WORK" <<'PY'
import json, sys, os
w = sys.argv[1]
def steps(n): return [json.loads(l) for l in open(os.path.join(w, n)) if l.strip()]
def one(n): return json.loads(open(os.path.join(w, n)).read())
def best(ss):  # the highest step that it and every step below it had under 0.1 % failed
    b = None
    for s in sorted(ss, key=lambda s: s["offered_per_sec"]):
        if s["failed_pct"] >= 0.1:
            break
        b = s
    return b
def at(ss, offered):
    return next((s for s in ss if s["offered_per_sec"] == offered), None)
print()
for mode, unit in (("message", "MESSAGE transactions/s"), ("call", "calls/s (INVITE/200/ACK/BYE)")):
    print(f"{unit}: every step (offered, completed, failed %, p50 ms, p99 ms, server CPU s); the max rate is the highest step that it and every step below it held under 0.1 % failed")
    for side in ("portcullis", "kamailio"):
        for s in steps(f"{side}-{mode}.json"):
            why = ", ".join(f"{n} {e}" for e, n in sorted((s.get("errors") or {}).items(), key=lambda x: -x[1])[:3])
            print(f"  {side:10} {s['offered_per_sec']:6d} {s['completed_per_sec']:9.1f} {s['failed_pct']:7.2f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['server_cpu_seconds']:7.2f}" + (f"  failures: {why}" if why else ""))
    p, k = best(steps(f"portcullis-{mode}.json")), best(steps(f"kamailio-{mode}.json"))
    if p and k:
        print(f"  max rate under 0.1% failed: portcullis {p['completed_per_sec']:.0f} (p99 {p['p99_ms']:.2f} ms), kamailio {k['completed_per_sec']:.0f} (p99 {k['p99_ms']:.2f} ms); ratio {p['completed_per_sec']/k['completed_per_sec']:.2f}, p99 ratio {p['p99_ms']/k['p99_ms']:.2f}")
        same = at(steps(f"portcullis-{mode}.json"), k["offered_per_sec"])
        if same:
            print(f"  at kamailio's max step ({k['offered_per_sec']}/s offered): portcullis {same['failed_pct']:.2f} % failed, p99 {same['p99_ms']:.2f} ms against {k['p99_ms']:.2f} ms; p99 ratio {same['p99_ms']/k['p99_ms']:.2f}")
    else:
        for side, b in (("portcullis", p), ("kamailio", k)):
            print(f"  max rate under 0.1% failed: {side} " + (f"{b['completed_per_sec']:.0f} (p99 {b['p99_ms']:.2f} ms)" if b else "none of the steps"))
    print()
pc, kc = one("portcullis-connect.json"), one("kamailio-connect.json")
pi = one("portcullis-idle.json")
print(f"TLS connections/s accepted: portcullis {pc['tls_connections_per_sec']:.0f}, kamailio {kc['tls_connections_per_sec']:.0f}, ratio {pc['tls_connections_per_sec']/kc['tls_connections_per_sec']:.2f}")
print(f"KiB per idle TLS connection ({pi['connections']} connections): portcullis {pi.get('go_heap_stack_kib_per_idle_tls_connection', float('nan')):.1f} (Go live heap after a collection, and stacks), RSS delta {pi['rss_kib_per_idle_tls_connection']:.1f}")
print("  kamailio: not measured here (its connections live in preallocated shared memory, which RSS does not show); the issue cites 50-60 KiB")
PY

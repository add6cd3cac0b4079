#!/usr/bin/env bash
# Runs bench/conf against portcullis-core and portcullis-edge (separate
# processes on loopback): one meeting that N anonymous guests join through
# the edge over TLS, then M meetings of 5. See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-1000}
MEETINGS=${MEETINGS:-300}
PER=${PER:-5}
CONCURRENCY=${CONCURRENCY:-32}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true

go build -o "$WORK/" ./cmd/portcullis ./cmd/portcullis-core ./cmd/portcullis-edge ./bench/conf
# Core and edge as separate processes (as deployed), so that each one's
# memory is measured; a private CA made with `portcullis pki`.
P="$WORK/pki"
"$WORK/portcullis" pki init --dir "$P" >/dev/null
"$WORK/portcullis" pki issue --dir "$P" --name core.bench.internal --san core.bench.internal --server --client >/dev/null
"$WORK/portcullis" pki issue --dir "$P" --name edge.bench.internal --san edge.bench.internal --server --client >/dev/null
"$WORK/portcullis" turn-cred --new-secret "$WORK/turn.secret" >/dev/null
cat >"$WORK/core.yaml" <<YAML
log: {level: warn}
metrics: {listen: 127.0.0.1:39101}
sip: {listen: 127.0.0.1:35061, users_listen: 127.0.0.1:35063, hostname: core.bench.internal}
tls: {ca_file: pki/ca.crt, cert_file: pki/core.bench.internal.crt, key_file: pki/core.bench.internal.key}
trusted_edges: [edge.bench.internal]
store: {driver: sqlite, path: core.db}
https: {listen: 127.0.0.1:30443}
turn: {secret_file: turn.secret}
registrar:
  domains: [{domain: example.test, algorithms: [SHA-256, MD5]}]
YAML
# All load comes from 127.0.0.1: the edge's per-source limits are lifted.
cat >"$WORK/edge.yaml" <<YAML
log: {level: warn}
metrics: {listen: 127.0.0.1:39100}
internal: {listen: 127.0.0.1:35062, hostname: edge.bench.internal, trusted_cores: [core.bench.internal]}
tls: {ca_file: pki/ca.crt, cert_file: pki/edge.bench.internal.crt, key_file: pki/edge.bench.internal.key}
core: {address: 127.0.0.1:35061, server_name: core.bench.internal}
external:
  listen: 127.0.0.1:35060
  tls_cert_file: pki/edge.bench.internal.crt
  tls_key_file: pki/edge.bench.internal.key
  home_domains: [example.test]
  limits: {requests_per_second: 1000000, burst: 1000000, connections_per_address: 100000, max_connections: 100000}
turn: {enabled: false}
federation: {allow_anonymous: true}
YAML
(cd "$WORK" && "$WORK/portcullis" user add sip:alice@example.test --config core.yaml --password-file <(echo "bench password one") >/dev/null)
(cd "$WORK" && "$WORK/portcullis" user add sip:bob@example.test --config core.yaml --password-file <(echo "bench password two") >/dev/null)
(cd "$WORK" && "$WORK/portcullis" user add sip:carol@example.test --config core.yaml --password-file <(echo "bench password three") >/dev/null)
"$WORK/portcullis-core" --config "$WORK/core.yaml" 2>"$WORK/core.log" &
CORE=$!
sleep 1
"$WORK/portcullis-edge" --config "$WORK/edge.yaml" 2>"$WORK/edge.log" &
EDGE=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:39100/readyz >/dev/null 2>&1 && break; sleep 0.2; done
create() { "$WORK/portcullis" meeting create --config "$WORK/core.yaml" --organizer "$1" --admission anonymous; }

# Many small meetings first, on fresh processes; then the big one.
echo "== $MEETINGS meetings of $PER" >&2
: >"$WORK/meetings.txt"
for i in $(seq "$MEETINGS"); do
	out=$(create "sip:$(echo alice bob carol | cut -d' ' -f$(( (i % 3) + 1 )))@example.test")
	echo "$(echo "$out" | head -1) $(echo "$out" | grep -o 'key [0-9]*' | cut -d' ' -f2)" >>"$WORK/meetings.txt"
done
"$WORK/conf" -server 127.0.0.1:35060 -server-name edge.bench.internal -ca "$P/ca.crt" -meetings "$WORK/meetings.txt" -n "$PER" -concurrency "$CONCURRENCY" -pids "$CORE,$EDGE" -names core,edge 2>>"$WORK/conf.log" | tee "$WORK/many.json"

echo "== one meeting of $N" >&2
out=$(create sip:alice@example.test)
uri=$(echo "$out" | head -1); key=$(echo "$out" | grep -o 'key [0-9]*' | cut -d' ' -f2)
"$WORK/conf" -server 127.0.0.1:35060 -server-name edge.bench.internal -ca "$P/ca.crt" -uri "$uri" -key "$key" -n "$N" -concurrency "$CONCURRENCY" -pids "$CORE,$EDGE" -names core,edge 2>>"$WORK/conf.log" | tee "$WORK/one.json"

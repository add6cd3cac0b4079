package relay_test

import (
	"strings"
	"testing"

	"portcullis/edge"
	"portcullis/internal/config"
)

func TestTURNConfigRules(t *testing.T) {
	base := `internal: {listen: 203.0.113.70:5061, hostname: e, trusted_cores: [c]}
metrics: {listen: 203.0.113.70:9100}
tls: {ca_file: a, cert_file: b, key_file: c}
core: {address: 203.0.113.10:5061, server_name: c}
turn:
  enabled: true
  realm: example.test
  secret_file: s
  listen_udp: [198.51.100.10:3478]
  relay: {bind_ipv4: 198.51.100.10}
`
	c := edge.DefaultConfig()
	if err := config.Decode("edge.yaml", []byte(base), &c); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ from, to, want string }{
		"empty realm":          {"realm: example.test", `realm: ""`, "edge.yaml:7: turn.realm: must not be empty"},
		"no listener":          {"listen_udp: [198.51.100.10:3478]", "listen_udp: []", "turn.listen_udp: at least one of"},
		"hostname listen":      {"listen_udp: [198.51.100.10:3478]", "listen_udp: [edge.example.test:3478]", "edge.yaml:9: turn.listen_udp[0]: must be ip:port"},
		"tls without cert":     {"listen_udp: [198.51.100.10:3478]", "listen_tls: [198.51.100.10:443]", "turn.tls_cert_file: must not be empty"},
		"wildcard bind no nat": {"bind_ipv4: 198.51.100.10", "bind_ipv4: 0.0.0.0", "turn.relay.advertise_ipv4: must be set when the bind address is a wildcard"},
		"v6 in v4":             {"bind_ipv4: 198.51.100.10", "bind_ipv4: '2001:db8::1'", "turn.relay.bind_ipv4: wrong address family"},
		"bad range":            {"bind_ipv4: 198.51.100.10}", "bind_ipv4: 198.51.100.10, port_min: 60000, port_max: 50000}", "turn.relay.port_min: relay port range"},
		"bad peer range":       {"secret_file: s", "secret_file: s\n  allowed_peers: [10.0.0.0/33]", "turn.allowed_peers[0]:"},
		"lifetime too long":    {"secret_file: s", "secret_file: s\n  lifetimes: {allocation: 2h}", "turn.lifetimes.allocation: must be between 30s and 1h"},
		"unknown key":          {"secret_file: s", "secret_file: s\n  relay_threads: 4", "edge.yaml:9: turn.relay_threads: unknown key"},
	} {
		c := edge.DefaultConfig()
		err := config.Decode("edge.yaml", []byte(strings.Replace(base, tc.from, tc.to, 1)), &c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", name, err, tc.want)
		}
	}
	// Disabled: nothing in the section is checked.
	c = edge.DefaultConfig()
	if err := config.Decode("edge.yaml", []byte(strings.Replace(base, "enabled: true", "enabled: false\n  realm2: x", 1)), &c); err == nil {
		t.Error("unknown key accepted in a disabled section")
	}
}

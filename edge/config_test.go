package edge_test

import (
	"strings"
	"testing"

	"portcullis/edge"
	"portcullis/internal/config"
)

const validEdge = `metrics:
  listen: 203.0.113.70:9100
internal:
  listen: 203.0.113.70:5061
  hostname: edge1.internal
  trusted_cores: [core1.internal]
tls:
  ca_file: ca.crt
  cert_file: e.crt
  key_file: e.key
core:
  address: 203.0.113.10:5061
  server_name: core1.internal
`

func TestEdgeConfigRules(t *testing.T) {
	c := edge.DefaultConfig()
	if err := config.Decode("edge.yaml", []byte(validEdge), &c); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ from, to, want string }{
		"wildcard metrics": {"listen: 203.0.113.70:9100", "listen: 0.0.0.0:9100", "edge.yaml:2: metrics.listen: must name the internal interface's address, not a wildcard"},
		"empty host":       {"listen: 203.0.113.70:9100", "listen: :9100", "edge.yaml:2: metrics.listen: must name the internal interface's address"},
		"no trusted cores": {"trusted_cores: [core1.internal]", "trusted_cores: []", "edge.yaml:6: internal.trusted_cores: must list at least one"},
		"backoff order":    {"server_name: core1.internal", "server_name: core1.internal\n  reconnect_min: 10s\n  reconnect_max: 1s", "edge.yaml:15: core.reconnect_max: must be at least reconnect_min"},
		"core port zero":   {"address: 203.0.113.10:5061", "address: 203.0.113.10:0", "edge.yaml:12: core.address: port must be 1-65535"},
	} {
		c := edge.DefaultConfig()
		err := config.Decode("edge.yaml", []byte(strings.Replace(validEdge, tc.from, tc.to, 1)), &c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", name, err, tc.want)
		}
	}
}

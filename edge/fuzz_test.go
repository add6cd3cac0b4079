package edge

import (
	"log/slog"
	"testing"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/internal/logthrottle"
	"portcullis/internal/sipnode"
)

// FuzzAccessEdgeHeaders runs the edge's own header handling — the sanity
// checks, trust header removal, route token opening and Record-Route
// hiding — on whatever sipgo's parser accepts: never a panic.
func FuzzAccessEdgeHeaders(f *testing.F) {
	f.Add([]byte("MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TLS 1.2.3.4;branch=z9hG4bK1\r\nFrom: <sip:a@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nMS-Edge-Proxy-Message-Trust: ms-source-type=AuthorizedServer\r\nms-edge-proxy-message-trust: x\r\nRoute: <sip:AAAA@1.2.3.4:5061;lr>\r\nContent-Length: 2\r\n\r\nhi"))
	f.Add([]byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 1.2.3.4;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nRecord-Route: <sip:abc@1.2.3.4:5;lr>, <sip:def@5.6.7.8:9;lr>\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("OPTIONS tel:+1 SIP/2.0\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"))
	a := &accessEdge{internal: "203.0.113.70:5061", external: "198.51.100.10:5061", cfg: ExternalConfig{HomeDomains: []string{"example.test"}, Limits: LimitsConfig{MaxMessageBytes: 65536}},
		tokens: sipnode.NewFlowTokens(), log: slog.New(slog.DiscardHandler), quiet: logthrottle.New(slog.New(slog.DiscardHandler)), refused: func(string) {}}
	p := sip.NewParser()
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := p.ParseSIP(b)
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *sip.Request:
			a.sane(m)
			sipnode.RemoveAll(m, access.TrustHeader)
			for _, h := range m.Headers() {
				if h.Name() == access.TrustHeader {
					t.Fatal("trust header left after removal")
				}
			}
			if r := m.Route(); r != nil {
				_, _ = a.tokens.OpenRoutes(r.Address.User)
				_, _ = a.tokens.Open(r.Address.User)
			}
		case *sip.Response:
			a.hideRoutes(m, "198.51.100.7:5061")
		}
	})
}

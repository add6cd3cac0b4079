package edge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/access/accesstest"
	"portcullis/core"
	"portcullis/edge"
	"portcullis/internal/siptest"
	"portcullis/internal/testdns"
	"portcullis/internal/testlog"
	"portcullis/policy"
)

// org is one whole deployment on loopback: a core (users listener) and an
// edge whose public certificate comes from the shared "public" CA that
// partners trust.
type org struct {
	t      *testing.T
	domain string
	core   *core.Server
	edge   *edge.Server
	ecfg   edge.Config
	pub    *accesstest.PKI
	// public is the edge's public certificate (names sip.<domain> and <domain>).
	public access.TLSFiles
	// edgeLog holds the edge's log lines.
	edgeLog *testlog.Buffer
}

func startOrg(t *testing.T, pub *accesstest.PKI, domain string, tune func(*edge.Config)) *org {
	t.Helper()
	e := newEnv(t)
	cc := e.coreConfig("127.0.0.1:0", "edge1.internal")
	cc.SIP.UsersListen = "127.0.0.1:0"
	cc.Registrar.Domains = []core.DomainConfig{{Domain: domain, Algorithms: []string{"SHA-256", "MD5"}}}
	c := e.startCore(cc)
	for _, u := range []string{"alice", "bob"} {
		if err := core.AddUser(context.Background(), c.Store(), "sip:"+u+"@"+domain, pw); err != nil {
			t.Fatal(err)
		}
	}
	coreAddr, _ := c.Addr()
	public := pub.Issue(t, access.IssueRequest{Name: "sip." + domain, SANs: []string{"sip." + domain, domain, "127.0.0.1"}, Usage: access.UsageServer | access.UsageClient})
	ec := edge.DefaultConfig()
	ec.Metrics.Listen, ec.Internal.Listen = "127.0.0.1:0", "127.0.0.1:0"
	ec.Internal.Hostname = "edge1.internal"
	ec.Internal.TrustedCores = []string{"core1.internal"}
	ec.TLS = e.nodeFiles("edge1.internal")
	ec.Core = edge.LinkConfig{Address: coreAddr, ServerName: "core1.internal", KeepaliveInterval: 100 * time.Millisecond,
		KeepaliveTimeout: 500 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	ec.External.Listen = "127.0.0.1:0"
	ec.External.PublicName = "sip." + domain
	ec.External.TLSCertFile, ec.External.TLSKeyFile = public.CertFile, public.KeyFile
	ec.External.HomeDomains = []string{domain}
	ec.Federation.AllowFederation = true
	ec.Federation.TrustRootsFile = pub.CAFile()
	if tune != nil {
		tune(&ec)
	}
	edgeLog := &testlog.Buffer{}
	d := deps(t, "edge-"+domain)
	d.Log = slog.New(slog.NewJSONHandler(io.MultiWriter(testlog.Writer(t, "edge-"+domain), edgeLog), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ed, err := edge.Start(ec, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ed.Close(); c.Close() })
	_, edgeOps := ed.Addr()
	waitReadyz(t, edgeOps, 200)
	// The core sends other domains' requests to the edge's internal listener.
	internal, _ := ed.Addr()
	cc.Federation.Edge = internal
	if err := c.Reload(cc); err != nil {
		t.Fatal(err)
	}
	return &org{t: t, domain: domain, core: c, edge: ed, ecfg: ec, pub: pub, public: public, edgeLog: edgeLog}
}

func (o *org) reload(tune func(*edge.Config)) {
	o.t.Helper()
	tune(&o.ecfg)
	if err := o.edge.Reload(o.ecfg); err != nil {
		o.t.Fatal(err)
	}
}

func (o *org) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(accesstest.Material(o.t, o.public).Leaf)
	p.AddCert(o.pub.CA.Cert)
	return p
}

// remote is a remote user of the org, registered through its edge.
func (o *org) remote(user string) *siptest.UA {
	o.t.Helper()
	ua := siptest.New(o.t, o.edge.ExternalAddr(), &tls.Config{RootCAs: o.roots(), ServerName: "sip." + o.domain, MinVersion: tls.VersionTLS12})
	aor := "sip:" + user + "@" + o.domain
	if res := ua.Register(aor, user, pw, "<sip:"+user+"@198.51.100.7:5061;transport=tls>"); res.StatusCode != 200 {
		o.t.Fatalf("%s REGISTER through the edge: %d", aor, res.StatusCode)
	}
	return ua
}

// internal is an internal user registered on the core's users listener.
func (o *org) internal(user string) *siptest.UA {
	o.t.Helper()
	ua := siptest.New(o.t, o.core.UsersAddr(), &tls.Config{RootCAs: accesstest.Material(o.t, o.ecfg.TLS).Roots, ServerName: "core1.internal", MinVersion: tls.VersionTLS12})
	aor := "sip:" + user + "@" + o.domain
	if res := ua.Register(aor, user, pw, "<sip:"+user+"@203.0.113.20:5061;transport=tls>"); res.StatusCode != 200 {
		o.t.Fatalf("%s REGISTER inside: %d", aor, res.StatusCode)
	}
	return ua
}

// partnerClient is an edge of some other organisation speaking to o's
// external listener with a certificate from the public CA naming names.
func (o *org) partnerClient(names ...string) *siptest.UA {
	o.t.Helper()
	f := o.pub.Issue(o.t, access.IssueRequest{Name: names[0], SANs: names, Usage: access.UsageServer | access.UsageClient})
	m := accesstest.Material(o.t, f)
	return siptest.New(o.t, o.edge.ExternalAddr(), &tls.Config{RootCAs: o.roots(), ServerName: "sip." + o.domain, MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{m.Cert}})
}

func trustOf(req *sip.Request) string {
	for _, h := range req.Headers() {
		if strings.EqualFold(h.Name(), access.TrustHeader) {
			return h.Value()
		}
	}
	return ""
}

func TestFederationIMBothWays(t *testing.T) {
	pub := accesstest.New(t)
	var a, b *org
	b = startOrg(t, pub, "partner.test", nil)
	a = startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test", Edge: b.edge.ExternalAddr()}}
		c.Federation.BlockedDomains = []string{"blocked.test"}
		c.IMFilter.URLs.Rules = append(c.IMFilter.URLs.Rules, policy.URLRule{Prefix: "javascript:", Action: policy.ActionBlock})
	})
	b.reload(func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "example.test", Edge: a.edge.ExternalAddr(), Verification: "unverified"}}
	})
	alice := a.remote("alice")   // A's remote user, through A's edge
	bob := b.internal("bob")     // B's internal user
	aliceIn := a.internal("bob") // A's internal user

	// A's remote user → B's internal user, through both edges.
	if res := alice.Message("sip:alice@example.test", "alice", pw, "sip:bob@partner.test", "hello partner, see http://docs.example.com/x"); res.StatusCode != 200 {
		t.Fatalf("IM out to the partner: %d %s", res.StatusCode, res.Reason)
	}
	got := bob.WaitMessages(1, 5*time.Second)
	if len(got) != 1 {
		t.Fatal("bob@partner.test got nothing")
	}
	if body := string(got[0].Body()); body != "hello partner, see _http://docs.example.com/x" {
		t.Fatalf("bob got %q: the outbound IM filter did not make the link safe", body)
	}
	trust := access.ParseTrust(trustOf(got[0]))
	if trust["ms-source-type"] != "DirectPartner" || trust["ms-remote-fqdn"] != "example.test" || trust["ms-source-verified-user"] != "unverified" || trust["ms-source-network"] != "federation" {
		t.Fatalf("trust header at bob: %q", trustOf(got[0]))
	}
	if vias := got[0].GetHeaders("Via"); len(vias) > 3 {
		t.Fatalf("bob sees %d Vias: A's internal hops leaked", len(vias))
	}
	for _, v := range got[0].GetHeaders("Via") {
		if strings.Contains(v.Value(), "edge1.internal") && strings.Contains(v.Value(), a.edge.ExternalAddr()) {
			t.Fatalf("internal Via of A at B: %s", v.Value())
		}
	}

	// B's internal user → A's remote user and A's internal user.
	if res := bob.Message("sip:bob@partner.test", "bob", pw, "sip:alice@example.test", "hello back"); res.StatusCode != 200 {
		t.Fatalf("IM in from the partner: %d %s", res.StatusCode, res.Reason)
	}
	if got := alice.WaitMessages(1, 5*time.Second); len(got) != 1 || string(got[0].Body()) != "hello back" || trustOf(got[0]) != "" {
		t.Fatalf("alice got %d (trust header %q)", len(got), trustOf(got[len(got)-1]))
	}
	if res := bob.Message("sip:bob@partner.test", "bob", pw, "sip:bob@example.test", "hi inside"); res.StatusCode != 200 {
		t.Fatalf("IM in to an internal user: %d %s", res.StatusCode, res.Reason)
	}
	got = aliceIn.WaitMessages(1, 5*time.Second)
	if len(got) != 1 || !strings.HasPrefix(trustOf(got[0]), "ms-source-type=DirectPartner") || !strings.Contains(trustOf(got[0]), "ms-source-verified-user=verified") {
		t.Fatalf("bob@example.test got %d", len(got))
	}

	// The IM filter acts in both directions at A: on what its remote user
	// sends in, on what its internal user sends out, on what B sends in.
	res := alice.Message("sip:alice@example.test", "alice", pw, "sip:bob@partner.test", "click javascript:alert(1)")
	if res.StatusCode != 403 || !strings.Contains(res.Reason, "IM filter") || res.GetHeader("Warning") == nil ||
		!strings.HasPrefix(res.GetHeader("Warning").Value(), "399 sip.example.test ") {
		t.Fatalf("blocked link from a remote user: %d %s %v", res.StatusCode, res.Reason, res.GetHeader("Warning"))
	}
	if res := aliceIn.Message("sip:bob@example.test", "bob", pw, "sip:bob@partner.test", "click javascript:alert(1)"); res.StatusCode != 403 || !strings.Contains(res.Reason, "IM filter") {
		t.Fatalf("blocked link outbound: %d %s", res.StatusCode, res.Reason)
	}
	// Wrapped: in a part of multipart/alternative (what Lync sends), or
	// compressed (which the filter cannot read: 415). Both passed before.
	multi := "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"javascript:alert(1)\">x</a>\r\n--b1--\r\n"
	if res := alice.MessageTyped("sip:alice@example.test", "sip:bob@partner.test", "multipart/alternative; boundary=b1", multi); res.StatusCode != 403 || !strings.Contains(res.Reason, "IM filter") {
		t.Fatalf("blocked link in a multipart body: %d %s", res.StatusCode, res.Reason)
	}
	if res := alice.Forged(sip.MESSAGE, "sip:alice@example.test", "sip:bob@partner.test", "", "", "\x1f\x8b compressed", sip.NewHeader("Content-Encoding", "gzip")); res.StatusCode != 415 || res.GetHeader("Accept-Encoding") == nil {
		t.Fatalf("compressed IM: %d %s", res.StatusCode, res.Reason)
	}
	if res := aliceIn.Message("sip:bob@example.test", "bob", pw, "sip:bob@partner.test", "see www.example.org"); res.StatusCode != 200 {
		t.Fatalf("link outbound: %d %s", res.StatusCode, res.Reason)
	}
	if got := bob.WaitMessages(2, 5*time.Second); len(got) != 2 || string(got[1].Body()) != "see _www.example.org" {
		t.Fatalf("bob@partner.test got %d, last %q", len(got), got[len(got)-1].Body())
	}
	res = bob.Message("sip:bob@partner.test", "bob", pw, "sip:alice@example.test", "click javascript:alert(2)")
	if res.StatusCode != 403 || !strings.Contains(res.Reason, "IM filter") {
		t.Fatalf("blocked link inbound: %d %s", res.StatusCode, res.Reason)
	}
	if n := len(alice.WaitMessages(2, 300*time.Millisecond)); n != 1 {
		t.Fatalf("a blocked IM reached alice (%d messages)", n)
	}

	// A blocked domain, and a domain that is neither listed nor discoverable.
	if res := alice.Message("sip:alice@example.test", "alice", pw, "sip:x@blocked.test", "hi"); res.StatusCode != 403 || !strings.Contains(res.Reason, "blocked") {
		t.Fatalf("blocked domain: %d %s", res.StatusCode, res.Reason)
	}
	if res := alice.Message("sip:alice@example.test", "alice", pw, "sip:x@unknown.test", "hi"); res.StatusCode != 403 {
		t.Fatalf("unlisted domain: %d %s", res.StatusCode, res.Reason)
	}
	_, ops := a.edge.Addr()
	if v := metric(t, ops, `portcullis_edge_federation_requests_total{direction="outbound",source_type="DirectPartner"}`); v == "" || v == "0" {
		t.Fatalf("outbound federation not counted: %q", v)
	}
	if v := metric(t, ops, `portcullis_edge_im_filter_actions_total{action="block",direction="inbound"}`); v != "3" {
		t.Fatalf("inbound blocks counted %q", v)
	}
	if v := metric(t, ops, `portcullis_edge_im_filter_actions_total{action="refused",direction="inbound"}`); v != "1" {
		t.Fatalf("inbound refusals (unreadable) counted %q", v)
	}
	if v := metric(t, ops, `portcullis_edge_im_filter_actions_total{action="block",direction="outbound"}`); v != "1" {
		t.Fatalf("outbound blocks counted %q", v)
	}
}

func TestFederationInboundChecks(t *testing.T) {
	pub := accesstest.New(t)
	dns, err := testdns.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	if err := dns.Add("_sipfederationtls._tcp.found.test. 60 IN SRV 0 0 5061 sip.found.test.", "sip.found.test. 60 IN A 127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	a := startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test", Edge: "127.0.0.1:9"}}
		c.Federation.BlockedDomains = []string{"blocked.test"}
		c.Federation.Resolver = dns.Addr()
		c.Federation.Discovery.MaxContacts = 2
	})
	alice := a.internal("alice")
	a.internal("bob")

	partner := a.partnerClient("sip.partner.test")
	// The partner's own users get in.
	if res := partner.Message("sip:carol@partner.test", "", "", "sip:alice@example.test", "hi from partner"); res.StatusCode != 200 {
		t.Fatalf("partner IM: %d %s", res.StatusCode, res.Reason)
	}
	// It cannot speak for a home user, another partner, or a forged trust.
	for _, c := range []struct{ from, why string }{
		{"sip:bob@example.test", "a home user"},
		{"sip:dave@other.test", "another domain"},
		{"sip:eve@blocked.test", "a blocked domain"},
	} {
		if res := partner.Message(c.from, "", "", "sip:alice@example.test", "spoof"); res.StatusCode != 403 {
			t.Fatalf("partner sending as %s: %d %s", c.why, res.StatusCode, res.Reason)
		}
	}
	forged := sip.NewHeader(access.TrustHeader, "ms-source-type=AuthorizedServer")
	if res := partner.Message("sip:carol@partner.test", "", "", "sip:alice@example.test", "forged", forged); res.StatusCode != 200 {
		t.Fatalf("partner IM with a forged trust header: %d", res.StatusCode)
	}
	// A partner cannot relay through us to a third domain.
	if res := partner.Message("sip:carol@partner.test", "", "", "sip:x@other.test", "relay"); res.StatusCode != 403 {
		t.Fatalf("relay through the edge: %d", res.StatusCode)
	}
	got := alice.WaitMessages(2, 5*time.Second)
	if len(got) != 2 || strings.Contains(trustOf(got[1]), "AuthorizedServer") || !strings.HasPrefix(trustOf(got[1]), "ms-source-type=DirectPartner") {
		t.Fatalf("alice got %d; trust %q", len(got), trustOf(got[len(got)-1]))
	}

	// A certificate for another domain claiming partner.test is refused.
	impostor := a.partnerClient("sip.impostor.test")
	if res := impostor.Message("sip:carol@partner.test", "", "", "sip:alice@example.test", "spoof"); res.StatusCode != 403 || !strings.Contains(res.Reason, "certificate") {
		t.Fatalf("impostor: %d %s", res.StatusCode, res.Reason)
	}
	// A certificate from a CA partners are not trusted by fails at TLS.
	rogue := accesstest.New(t)
	rf := rogue.Issue(t, access.IssueRequest{Name: "sip.partner.test", SANs: []string{"sip.partner.test"}, Usage: access.UsageClient})
	conn, err := tls.Dial("tcp", a.edge.ExternalAddr(), &tls.Config{RootCAs: a.roots(), ServerName: "sip.example.test", Certificates: []tls.Certificate{accesstest.Material(t, rf).Cert}})
	if err == nil {
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("a certificate from an untrusted CA was accepted")
	}

	// Discovery off: an unlisted domain with an SRV record is refused.
	found := a.partnerClient("sip.found.test")
	if res := found.Message("sip:fred@found.test", "", "", "sip:alice@example.test", "hi"); res.StatusCode != 403 {
		t.Fatalf("undiscovered domain: %d %s", res.StatusCode, res.Reason)
	}
	a.reload(func(c *edge.Config) { c.Federation.Discovery.Enabled = true })
	if res := found.Message("sip:fred@found.test", "", "", "sip:alice@example.test", "hi"); res.StatusCode != 200 {
		t.Fatalf("discovered domain: %d %s", res.StatusCode, res.Reason)
	}
	got = alice.WaitMessages(3, 5*time.Second)
	if len(got) != 3 || !strings.HasPrefix(trustOf(got[2]), "ms-source-type=AutoFederation") || !strings.Contains(trustOf(got[2]), "unverified") {
		t.Fatalf("discovered IM: %d %q", len(got), trustOf(got[len(got)-1]))
	}
	// Discovery on, but no SRV record: refused.
	nosrv := a.partnerClient("sip.nosrv.test")
	if res := nosrv.Message("sip:x@nosrv.test", "", "", "sip:alice@example.test", "hi"); res.StatusCode != 403 {
		t.Fatalf("domain without SRV: %d", res.StatusCode)
	}
	// The enumeration cap: a discovered partner reaches at most 2 distinct users.
	if res := found.Message("sip:fred@found.test", "", "", "sip:bob@example.test", "hi"); res.StatusCode != 200 {
		t.Fatalf("second contact: %d", res.StatusCode)
	}
	if res := found.Message("sip:fred@found.test", "", "", "sip:carol@example.test", "hi"); res.StatusCode != 403 || !strings.Contains(res.Reason, "contacts") {
		t.Fatalf("third contact: %d %s", res.StatusCode, res.Reason)
	}
	_, ops := a.edge.Addr()
	if v := metric(t, ops, `portcullis_edge_requests_refused_total{reason="discovered_contact_cap"}`); v != "1" {
		t.Fatalf("contact cap counted %q", v)
	}

	// Hostile bodies from a partner: refused, never a crash.
	for _, c := range []struct {
		ct   string
		body string
		want int
	}{
		{"text/plain", "bad \xff\xfe utf-8", 400},
		{"message/cpim", "A: b\r\n\r\nContent-Type: message/cpim\r\n\r\nA: b\r\n\r\nContent-Type: message/cpim\r\n\r\nA: b\r\n\r\nContent-Type: text/plain\r\n\r\nhttp://x.com", 400},
		{"text/html", "<a href='http://x.com'><<<<<" + strings.Repeat("<b>", 5000), 200},
		{"text/plain", strings.Repeat("x", 70<<10), 413},
	} {
		if res := partner.MessageTyped("sip:carol@partner.test", "sip:alice@example.test", c.ct, c.body); res.StatusCode != c.want {
			t.Errorf("%s body of %d bytes: %d %s, want %d", c.ct, len(c.body), res.StatusCode, res.Reason, c.want)
		}
	}

	// Federation switched off: partners are refused.
	a.reload(func(c *edge.Config) { c.Federation.AllowFederation = false })
	if res := partner.Message("sip:carol@partner.test", "", "", "sip:alice@example.test", "hi"); res.StatusCode == 200 {
		t.Fatalf("federation off, partner IM: %d", res.StatusCode)
	}
}

func TestFederationFileTransferFilter(t *testing.T) {
	pub := accesstest.New(t)
	a := startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test", Edge: "127.0.0.1:9"}}
	})
	a.internal("alice")
	partner := a.partnerClient("sip.partner.test")
	sdp := "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=message 7654 TCP/TLS/MSRP *\r\na=sendonly\r\na=path:msrps://198.51.100.7:7654/s;tcp\r\na=file-selector:name:\"setup.exe\" type:application/octet-stream size:1024\r\n"
	if res := partner.InviteTyped("sip:carol@partner.test", "sip:alice@example.test", "application/sdp", sdp); res.StatusCode != 403 || !strings.Contains(res.Reason, "setup.exe") {
		t.Fatalf("exe offer: %d %s", res.StatusCode, res.Reason)
	}
	legacy := "Application-Name: File Transfer\r\nInvitation-Command: INVITE\r\nApplication-File: run.bat\r\n"
	if res := partner.MessageTyped("sip:carol@partner.test", "sip:alice@example.test", "text/x-msmsgsinvite; charset=UTF-8", legacy); res.StatusCode != 403 {
		t.Fatalf("legacy invitation: %d %s", res.StatusCode, res.Reason)
	}
}

// Outbound, A tries a partner's SRV targets in order and falls back past a
// dead one, and sends nothing to an edge whose certificate does not name
// the domain called.
func TestFederationOutboundTargets(t *testing.T) {
	pub := accesstest.New(t)
	b := startOrg(t, pub, "partner.test", func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "example.test", Edge: "127.0.0.1:9"}}
	})
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close() // a closed port: connections are refused
	_, bPort, _ := net.SplitHostPort(b.edge.ExternalAddr())
	dns, err := testdns.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	if err := dns.Add(
		"_sipfederationtls._tcp.partner.test. 60 IN SRV 0 0 "+strconv.Itoa(deadPort)+" sip.partner.test.",
		"_sipfederationtls._tcp.partner.test. 60 IN SRV 10 0 "+bPort+" sip.partner.test.",
		"sip.partner.test. 60 IN A 127.0.0.1",
	); err != nil {
		t.Fatal(err)
	}
	a := startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.Resolver = dns.Addr()
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test"}, {Domain: "impostor.test", Edge: b.edge.ExternalAddr()}}
	})
	bob := b.internal("bob")
	alice := a.internal("alice")
	if res := alice.Message("sip:alice@example.test", "alice", pw, "sip:bob@partner.test", "via the second target"); res.StatusCode != 200 {
		t.Fatalf("SRV fallback: %d %s", res.StatusCode, res.Reason)
	}
	if got := bob.WaitMessages(1, 5*time.Second); len(got) != 1 {
		t.Fatal("bob got nothing")
	}
	// B's certificate names partner.test, not impostor.test: A does not send.
	if res := alice.Message("sip:alice@example.test", "alice", pw, "sip:bob@impostor.test", "to the wrong edge"); res.StatusCode != 503 {
		t.Fatalf("edge with a certificate for another domain: %d %s", res.StatusCode, res.Reason)
	}
	if n := len(bob.WaitMessages(2, 300*time.Millisecond)); n != 1 {
		t.Fatalf("a message reached the wrong organisation (%d)", n)
	}
}

// A's connection to B's edge outlives B's idle timeout because A pings it
// (RFC 5626 CRLF keepalive): the second IM, after the timeout, goes over
// the same connection.
func TestFederationKeepalive(t *testing.T) {
	pub := accesstest.New(t)
	b := startOrg(t, pub, "partner.test", func(c *edge.Config) {
		c.External.Limits.IdleTimeout = time.Second
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "example.test", Edge: "127.0.0.1:9"}}
	})
	a := startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.KeepaliveInterval = 200 * time.Millisecond
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test", Edge: b.edge.ExternalAddr()}}
	})
	bob := b.internal("bob")
	alice := a.internal("alice")
	for i, wait := range []time.Duration{0, 2500 * time.Millisecond} {
		time.Sleep(wait)
		if res := alice.Message("sip:alice@example.test", "alice", pw, "sip:bob@partner.test", "ping "+strconv.Itoa(i)); res.StatusCode != 200 {
			t.Fatalf("IM %d: %d %s", i, res.StatusCode, res.Reason)
		}
	}
	if got := bob.WaitMessages(2, 5*time.Second); len(got) != 2 {
		t.Fatalf("bob got %d", len(got))
	}
	if n := strings.Count(b.edgeLog.String(), `"partner edge accepted"`); n != 1 {
		t.Fatalf("B accepted %d partner connections: the idle one was not kept alive", n)
	}
}

// Calls between two organisations, through both edges, each way: a remote
// user of A and an internal user of B. The callee answers, the caller's
// ACK reaches it, re-INVITE, UPDATE and INFO cross each way, and either
// party hangs up; a caller's CANCEL stops the
// ringing; a 2xx that crosses the CANCEL still reaches the caller, who
// ACKs and hangs it up. Until 2026-11-22 no in-dialog request crossed: each
// edge dropped the other's Record-Route, and the callee's edge refused the
// ACK (403, its Request-URI a contact, not a home domain).
func TestFederationCalls(t *testing.T) {
	pub := accesstest.New(t)
	b := startOrg(t, pub, "partner.test", nil)
	a := startOrg(t, pub, "example.test", func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "partner.test", Edge: b.edge.ExternalAddr()}}
	})
	b.reload(func(c *edge.Config) {
		c.Federation.Partners = []policy.PartnerConfig{{Domain: "example.test", Edge: a.edge.ExternalAddr()}}
	})
	alice := siptest.NewPhone(a.remote("alice"), "sip:alice@198.51.100.7:5061;transport=tls", true)
	bob := siptest.NewPhone(b.internal("bob"), "sip:bob@203.0.113.20:5061;transport=tls", true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, dir := range []direction{
		{alice, bob, "sip:alice@example.test", "alice", "sip:bob@partner.test"},
		{bob, alice, "sip:bob@partner.test", "bob", "sip:alice@example.test"},
	} {
		for _, callerHangsUp := range []bool{true, false} {
			sess := dir.caller.CallAcked(ctx, t, dir.callee, dir.from, dir.user, pw, dir.to)
			// In the dialog, each way: a re-INVITE (answered and ACKed),
			// UPDATE and INFO.
			reinvites := dir.callee.ReInvites.Load() + dir.caller.ReInvites.Load()
			for _, m := range []sip.RequestMethod{sip.INVITE, sip.UPDATE, sip.INFO} {
				for side, send := range map[string]func() (*sip.Response, error){
					"caller": func() (*sip.Response, error) {
						if m == sip.INVITE {
							return siptest.ReInvite(ctx, sess, nil)
						}
						return siptest.InDialog(ctx, sess, nil, m)
					},
					"callee": func() (*sip.Response, error) {
						if m == sip.INVITE {
							return siptest.ReInvite(ctx, nil, dir.callee.Incoming())
						}
						return siptest.InDialog(ctx, nil, dir.callee.Incoming(), m)
					},
				} {
					if res, err := send(); err != nil || res.StatusCode != 200 {
						t.Fatalf("%s's call: %s from the %s: %v %v", dir.user, m, side, res, err)
					}
				}
			}
			if n := dir.callee.ReInvites.Load() + dir.caller.ReInvites.Load() - reinvites; n != 2 {
				t.Fatalf("%d re-INVITEs arrived, want 2", n)
			}
			hangUp(ctx, t, dir, sess, callerHangsUp)
		}

		// Cancelled at once: the CANCEL may overtake the INVITE before the
		// callee's core forks it (then nothing rings); if it rings, it stops.
		cancels, invites := dir.callee.Cancels.Load(), dir.callee.Invites.Load()
		dir.callee.Answer = false
		cs, is, err := dir.caller.CallAndCancel(ctx, dir.from, dir.user, pw, dir.to, 0)
		if err != nil || cs != 200 || is != 487 {
			t.Fatalf("%s cancels: CANCEL %d, INVITE %d, %v", dir.user, cs, is, err)
		}
		time.Sleep(100 * time.Millisecond) // an INVITE still on its way would ring by now
		siptest.Eventually(t, "the callee's ringing stops", func() bool {
			return dir.callee.Cancels.Load()-cancels == dir.callee.Invites.Load()-invites
		})

		acks, byes := dir.callee.Acks.Load(), dir.callee.Byes.Load()
		dir.callee.CrossAnswer.Store(true)
		res, bye, err := dir.caller.CallCancelCrossed(ctx, dir.from, dir.user, pw, dir.to, siptest.CrossHooks{})
		siptest.CheckCrossed(t, dir.callee, acks, byes, res, bye, err)
		dir.callee.CrossAnswer.Store(false)
		dir.callee.Answer = true
	}
}

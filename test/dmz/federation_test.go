// Package dmz_test runs whole deployments as a DMZ: each organisation's core
// on an internal network and its edge in a DMZ with a leg on each side, in
// network namespaces joined by veth links, with RFC 5737 addresses; an
// "internet" namespace routes between the DMZs and holds remote users, a
// test DNS server and a third organisation's edge played by Kamailio.
package dmz_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"portcullis/access"
	"portcullis/access/accesstest"
	"portcullis/internal/siptest"
	"portcullis/internal/testdns"
)

// pubRoots is a pool holding the partners' CA.
func pubRoots(t *testing.T, pub *accesstest.PKI) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(pub.CA.Cert)
	return p
}

// Addresses (STYLE.md): the internet 198.51.100.0/24; org A's internal
// network 203.0.113.0/26 and DMZ .64/26; org B's .128/26 and .192/26.
const (
	coreA, edgeAInt, edgeAExt, routerA = "203.0.113.10", "203.0.113.1", "203.0.113.65", "203.0.113.126"
	coreB, edgeBInt, edgeBExt, routerB = "203.0.113.138", "203.0.113.129", "203.0.113.193", "203.0.113.254"
	dnsAddr, aliceAddr, kamailioAddr   = "198.51.100.53", "198.51.100.7", "198.51.100.30"
	password                           = "correct horse battery"
)

type orgSpec struct {
	name, domain                   string // namespace stem, home domain
	core, edgeInt, edgeExt, router string
	federation                     string // the edge's federation section
	mcuMedia                       string // when set, the edge's media relay runs, allowed to reach this range only
}

type built struct {
	dir                    string
	portcullis, core, edge string
}

func build(t *testing.T) built {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/portcullis", "./cmd/portcullis-core", "./cmd/portcullis-edge")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return built{dir: dir, portcullis: filepath.Join(dir, "portcullis"), core: filepath.Join(dir, "portcullis-core"), edge: filepath.Join(dir, "portcullis-edge")}
}

func write(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// deployment is one organisation's running core and edge.
type deployment struct {
	spec     orgSpec
	dir      string
	internal access.TLSFiles // the org's internal CA (core certificate)
	edgeTLS  access.TLSFiles // the edge's internal certificate
	public   access.TLSFiles // the edge's public certificate
	edgeYAML string
	edge     *proc
	core     *proc
}

func (l *lab) deploy(b built, pub *accesstest.PKI, s orgSpec) *deployment {
	t := l.t
	t.Helper()
	dir := t.TempDir()
	ipki := accesstest.New(t)
	coreTLS := ipki.Node(t, "core1.internal")
	edgeTLS := ipki.Node(t, "edge1.internal")
	public := pub.Issue(t, access.IssueRequest{Name: "sip." + s.domain, SANs: []string{"sip." + s.domain, s.domain}, Usage: access.UsageServer | access.UsageClient})
	secret := filepath.Join(dir, "turn.secret")
	if err := access.NewTURNSecret(secret); err != nil {
		t.Fatal(err)
	}
	coreYAML := write(t, filepath.Join(dir, "core.yaml"), fmt.Sprintf(`log: {level: debug}
metrics: {listen: "%[1]s:9101"}
sip: {listen: "%[1]s:5061", users_listen: "%[1]s:5063", hostname: core1.internal}
tls: {ca_file: %[2]s, cert_file: %[3]s, key_file: %[4]s}
trusted_edges: [edge1.internal]
store: {driver: sqlite, path: %[5]s/core.db}
https: {listen: "%[1]s:20443"}
turn: {secret_file: %[6]s, uris: ["turn:%[9]s:3478?transport=udp", "turn:%[9]s:3478?transport=tcp"]}
registrar:
  domains: [{domain: %[7]s, algorithms: [SHA-256, MD5]}]
federation: {edge: "%[8]s:5062"}
`, s.core, coreTLS.CAFile, coreTLS.CertFile, coreTLS.KeyFile, dir, secret, s.domain, s.edgeInt, s.edgeExt))
	d := &deployment{spec: s, dir: dir, internal: coreTLS, edgeTLS: edgeTLS, public: public}
	d.edgeYAML = filepath.Join(dir, "edge.yaml")
	d.writeEdge(t, edgeTLS, pub.CAFile(), s.federation)
	pwFile := write(t, filepath.Join(dir, "password"), password+"\n")
	for _, u := range []string{"alice", "bob"} {
		l.exec(s.name+"-int", b.portcullis, "user", "add", "--config", coreYAML, "--password-file", pwFile, "sip:"+u+"@"+s.domain)
	}
	d.core = l.start(s.name+"-int", "core "+s.domain, b.core, "--config", coreYAML)
	d.core.wait(t, "core listening", 20*time.Second)
	d.edge = l.start(s.name+"-dmz", "edge "+s.domain, b.edge, "--config", d.edgeYAML)
	d.edge.wait(t, "link to core up", 20*time.Second)
	return d
}

func (d *deployment) writeEdge(t *testing.T, edgeTLS access.TLSFiles, pubCA, federation string) {
	s := d.spec
	write(t, d.edgeYAML, fmt.Sprintf(`log: {level: debug}
metrics: {listen: "%[1]s:9100"}
internal: {listen: "%[1]s:5062", hostname: edge1.internal, trusted_cores: [core1.internal]}
tls: {ca_file: %[2]s, cert_file: %[3]s, key_file: %[4]s}
core: {address: "%[5]s:5061", server_name: core1.internal, keepalive_interval: 1s}
external:
  listen: "%[6]s:5061"
  tls_cert_file: %[7]s
  tls_key_file: %[8]s
  public_name: sip.%[9]s
  home_domains: [%[9]s]
%[13]s
im_filter:
  urls:
    rules:
      - {prefix: "http:", action: allow}
      - {prefix: "https:", action: allow}
      - {prefix: "www.", action: allow}
      - {prefix: "javascript:", action: block}
federation:
  allow_federation: true
  trust_roots_file: %[10]s
  resolver: "%[11]s:53"
%[12]s`, s.edgeInt, edgeTLS.CAFile, edgeTLS.CertFile, edgeTLS.KeyFile, s.core, s.edgeExt, d.public.CertFile, d.public.KeyFile, s.domain, pubCA, dnsAddr, federation, d.turnSection()))
}

// turnSection is the edge's media relay: off, or on the external address
// (UDP and TCP 3478, relay ports from the same address) with the
// organisation's MCU media range as the only inside range it may reach.
func (d *deployment) turnSection() string {
	s := d.spec
	if s.mcuMedia == "" {
		return "turn: {enabled: false}"
	}
	return fmt.Sprintf(`turn:
  enabled: true
  realm: %[1]s
  secret_file: %[2]s
  listen_udp: ["%[3]s:3478"]
  listen_tcp: ["%[3]s:3478"]
  relay: {bind_ipv4: %[3]s, advertise_ipv4: %[3]s, port_min: 49152, port_max: 49251}
  allowed_peers: [%[4]s]`, s.domain, filepath.Join(d.dir, "turn.secret"), s.edgeExt, s.mcuMedia)
}

// reloadEdge rewrites the edge's federation section and sends SIGHUP.
func (d *deployment) reloadEdge(t *testing.T, pubCA, federation string) {
	t.Helper()
	d.writeEdge(t, d.edgeTLS, pubCA, federation)
	n := strings.Count(d.edge.output(), "edge config applied")
	_ = syscall.Kill(d.edge.cmd.Process.Pid, syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(d.edge.output(), "edge config applied") == n {
		if time.Now().After(deadline) {
			t.Fatalf("edge %s did not apply the reload:\n%s", d.spec.domain, lastLines(d.edge.output(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// client runs `portcullis client` in a namespace.
func (l *lab) client(b built, ns string, verb string, server, serverName, ca, aor, pwFile string, rest ...string) string {
	args := append([]string{b.portcullis, "client", verb, "--server", server, "--server-name", serverName, "--ca", ca, "--user", aor, "--password-file", pwFile}, rest...)
	out, _ := l.try(ns, args...) // a refused IM exits 1: the answer is in the output
	return out
}

func TestDMZFederation(t *testing.T) {
	l := newLab(t)
	b := build(t)
	pub := accesstest.New(t) // the public CA every organisation's edge certificate comes from
	for _, ns := range []string{"inet", "a-int", "a-dmz", "b-int", "b-dmz"} {
		l.addNS(ns)
	}
	l.link("a-int", coreA+"/26", "a-dmz", edgeAInt+"/26")
	l.link("a-dmz", edgeAExt+"/26", "inet", routerA+"/26")
	l.link("b-int", coreB+"/26", "b-dmz", edgeBInt+"/26")
	l.link("b-dmz", edgeBExt+"/26", "inet", routerB+"/26")
	for _, a := range []string{dnsAddr, aliceAddr, kamailioAddr} {
		l.run("ip", "-n", l.ns("inet"), "addr", "add", a+"/32", "dev", "lo")
	}
	l.run("ip", "netns", "exec", l.ns("inet"), "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// The DMZs route to the internet; the internal networks route nowhere.
	l.run("ip", "-n", l.ns("a-dmz"), "route", "add", "default", "via", routerA)
	l.run("ip", "-n", l.ns("b-dmz"), "route", "add", "default", "via", routerB)

	// The test DNS server, inside the internet namespace.
	var dns *testdns.Server
	if err := l.inNS("inet", func() error {
		pc, err := net.ListenPacket("udp", dnsAddr+":53")
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", dnsAddr+":53")
		if err != nil {
			pc.Close()
			return err
		}
		dns = testdns.Serve(pc, ln)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	if err := dns.Add(
		"_sipfederationtls._tcp.example.test. 60 IN SRV 0 0 5061 sip.example.test.",
		"sip.example.test. 60 IN A "+edgeAExt,
		"_sipfederationtls._tcp.partner.test. 60 IN SRV 0 0 5061 sip.partner.test.",
		"sip.partner.test. 60 IN A "+edgeBExt,
	); err != nil {
		t.Fatal(err)
	}

	// Org A lists partner.test (its edge found through SRV) and third.test
	// (Kamailio, by address), and blocks blocked.test. Org B lists no one
	// and discovers A through SRV.
	orgA := orgSpec{name: "a", domain: "example.test", core: coreA, edgeInt: edgeAInt, edgeExt: edgeAExt, router: routerA, federation: `  partners:
    - {domain: partner.test}
    - {domain: third.test, edge: "` + kamailioAddr + `:5061"}
  blocked_domains: [blocked.test]
`}
	orgB := orgSpec{name: "b", domain: "partner.test", core: coreB, edgeInt: edgeBInt, edgeExt: edgeBExt, router: routerB, federation: `  discovery: {enabled: true, max_contacts: 2}
`}
	l.deploy(b, pub, orgA)
	bb := l.deploy(b, pub, orgB)

	// From the internet only the edges' external listeners answer.
	for addr, want := range map[string]bool{
		edgeAExt + ":5061": true, edgeBExt + ":5061": true,
		coreA + ":5061": false, coreA + ":5063": false, coreB + ":5063": false,
		edgeAInt + ":5062": false, edgeBInt + ":5062": false, edgeAInt + ":9100": false,
	} {
		if got := l.reachable("inet", addr); got != want {
			t.Errorf("from the internet, %s reachable: %v, want %v", addr, got, want)
		}
	}

	pw := write(t, filepath.Join(t.TempDir(), "pw"), password+"\n")
	// alice@example.test is a remote user on the internet; bob@partner.test
	// is inside org B.
	aliceListen := l.start("inet", "alice listen", b.portcullis, "client", "listen", "--server", edgeAExt+":5061", "--server-name", "sip.example.test",
		"--ca", pub.CAFile(), "--user", "sip:alice@example.test", "--password-file", pw)
	bobListen := l.start("b-int", "bob listen", b.portcullis, "client", "listen", "--server", coreB+":5063", "--server-name", "core1.internal",
		"--ca", bb.internal.CAFile, "--user", "sip:bob@partner.test", "--password-file", pw)
	aliceListen.wait(t, "listening as", 10*time.Second)
	bobListen.wait(t, "listening as", 10*time.Second)

	aliceIM := func(to, text string) string {
		return l.client(b, "inet", "im", edgeAExt+":5061", "sip.example.test", pub.CAFile(), "sip:alice@example.test", pw, "--to", to, text)
	}
	bobIM := func(to, text string) string {
		return l.client(b, "b-int", "im", coreB+":5063", "core1.internal", bb.internal.CAFile, "sip:bob@partner.test", pw, "--to", to, text)
	}
	// until retries while a listener's registration is still on its way.
	until := func(send func() string, want string) string {
		var out string
		for range 50 {
			if out = send(); strings.Contains(out, want) {
				return out
			}
			time.Sleep(200 * time.Millisecond)
		}
		return out
	}

	// A's remote user → B's internal user: A's edge finds B's through SRV,
	// B's edge discovers example.test through SRV.
	if out := until(func() string { return aliceIM("sip:bob@partner.test", "hello partner, see http://docs.example.com") }, ": 200"); !strings.Contains(out, ": 200") {
		t.Fatalf("A → B: %s", out)
	}
	bobListen.wait(t, "sip:alice@example.test: hello partner, see _http://docs.example.com", 10*time.Second)
	// B's internal user → A's remote user.
	if out := until(func() string { return bobIM("sip:alice@example.test", "hello back") }, ": 200"); !strings.Contains(out, ": 200") {
		t.Fatalf("B → A: %s", out)
	}
	aliceListen.wait(t, "sip:bob@partner.test: hello back", 10*time.Second)
	if !strings.Contains(bb.edge.output(), "AutoFederation") {
		t.Error("B's edge did not log example.test as discovered (AutoFederation)")
	}

	// Calls between the organisations, each way, through both edges:
	// A's remote user on the internet and B's user inside B.
	alicePhone := l.phone(t, "inet", edgeAExt+":5061", pubRoots(t, pub), "sip.example.test", "sip:alice@example.test", "sip:alice@"+aliceAddr+":5071;transport=tls")
	bobPhone := l.phone(t, "b-int", coreB+":5063", caPool(t, bb.internal.CAFile), "core1.internal", "sip:bob@partner.test", "sip:bob@203.0.113.140:5061;transport=tls")
	callBothWays(t, alicePhone, "sip:alice@example.test", bobPhone, "sip:bob@partner.test")

	// The IM filter across the federation link, both ways.
	if out := aliceIM("sip:bob@partner.test", "javascript:alert(1)"); !strings.Contains(out, "403") || !strings.Contains(out, "IM filter") {
		t.Errorf("blocked link A → B: %s", out)
	}
	if out := bobIM("sip:alice@example.test", "try javascript:alert(2)"); !strings.Contains(out, "403") || !strings.Contains(out, "IM filter") {
		t.Errorf("blocked link B → A: %s", out)
	}
	// A blocked domain.
	if out := aliceIM("sip:x@blocked.test", "hi"); !strings.Contains(out, "403") {
		t.Errorf("blocked domain: %s", out)
	}

	// A third organisation's edge: Kamailio with mutual TLS. It answers an
	// IM and sends one back ("echo: …") to the sender through A's edge.
	kam := l.startKamailio(pub, edgeAExt)
	for i := 0; !l.reachable("inet", kamailioAddr+":5061"); i++ {
		if i == 100 {
			t.Fatalf("Kamailio does not listen:\n%s", lastLines(kam.output(), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := until(func() string { return aliceIM("sip:carol@third.test", "hello Kamailio") }, ": 200"); !strings.Contains(out, ": 200") {
		t.Fatalf("A → Kamailio: %s", out)
	}
	kam.wait(t, "PARTNER-IM from=sip:alice@example.test to=sip:carol@third.test body=hello Kamailio trust=<null>", 10*time.Second) // no trust header leaves an edge
	aliceListen.wait(t, "sip:carol@third.test: echo: hello Kamailio", 10*time.Second)

	// Someone on the internet with a certificate from the partners' CA, but
	// for another domain, cannot speak for partner.test at A's edge.
	mallory := pub.Issue(t, access.IssueRequest{Name: "sip.evil.test", SANs: []string{"sip.evil.test", "evil.test"}, Usage: access.UsageServer | access.UsageClient})
	if err := l.inNS("inet", func() error {
		ua := siptest.New(t, edgeAExt+":5061", &tls.Config{RootCAs: pubRoots(t, pub), ServerName: "sip.example.test", MinVersion: tls.VersionTLS12,
			Certificates: []tls.Certificate{accesstest.Material(t, mallory).Cert}})
		if res := ua.MessageTyped("sip:mallory@partner.test", "sip:alice@example.test", "text/plain", "spoof"); res.StatusCode != 403 || !strings.Contains(res.Reason, "certificate") {
			return fmt.Errorf("certificate for evil.test claiming partner.test: %d %s", res.StatusCode, res.Reason)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// B with discovery off: A's users are refused (example.test is not listed).
	bb.reloadEdge(t, pub.CAFile(), "  discovery: {enabled: false}\n")
	if out := aliceIM("sip:bob@partner.test", "after discovery off"); !strings.Contains(out, "403") {
		t.Errorf("discovery off at B, A → B: %s", out)
	}
	if out := bobIM("sip:alice@example.test", "after discovery off"); !strings.Contains(out, "403") {
		t.Errorf("discovery off at B, B → A: %s", out)
	}
	// Discovery on again with a cap of 2 distinct contacts: A's users may
	// reach bob and alice at B, not a third.
	bb.reloadEdge(t, pub.CAFile(), "  discovery: {enabled: true, max_contacts: 2}\n")
	for _, to := range []string{"sip:bob@partner.test", "sip:alice@partner.test"} {
		if out := aliceIM(to, "contact"); strings.Contains(out, "403") {
			t.Errorf("contact %s within the cap: %s", to, out)
		}
	}
	if out := aliceIM("sip:carol@partner.test", "third contact"); !strings.Contains(out, "403") || !strings.Contains(out, "contacts") {
		t.Errorf("enumeration cap: %s", out)
	}
}

// startKamailio runs Kamailio as third.test's edge in the internet
// namespace: TLS with a certificate from the public CA, client certificates
// required and verified both ways.
func (l *lab) startKamailio(pub *accesstest.PKI, edgeA string) *proc {
	t := l.t
	t.Helper()
	if _, err := exec.LookPath("kamailio"); err != nil {
		t.Fatal("kamailio is required: apt-get install kamailio kamailio-tls-modules (make test installs it)")
	}
	dir := t.TempDir()
	cert := pub.Issue(t, access.IssueRequest{Name: "sip.third.test", SANs: []string{"sip.third.test", "third.test"}, Usage: access.UsageServer | access.UsageClient})
	// Certificates required and verified both ways: as a server and when it
	// calls A's edge.
	var tlsSections strings.Builder
	for _, role := range []string{"server", "client"} {
		fmt.Fprintf(&tlsSections, "[%s:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\nprivate_key = %s\ncertificate = %s\nca_list = %s\n\n",
			role, cert.KeyFile, cert.CertFile, pub.CAFile())
	}
	tlsCfg := write(t, filepath.Join(dir, "tls.cfg"), tlsSections.String())
	cfg := write(t, filepath.Join(dir, "kamailio.cfg"), strings.NewReplacer("@LISTEN@", kamailioAddr, "@TLSCFG@", tlsCfg, "@EDGE@", edgeA).Replace(kamailioCfg))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "kamailio", "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("kamailio -c: %v\n%s", err, out)
	}
	return l.start("inet", "kamailio", "kamailio", "-DD", "-E", "-m", "128", "-f", cfg, "-w", dir, "-P", filepath.Join(dir, "kam.pid"))
}

const kamailioCfg = `#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
enable_tls=yes
listen=tls:@LISTEN@:5061
auto_aliases=no
alias="third.test"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "rr.so"
loadmodule "uac.so"
loadmodule "tls.so"

modparam("tls", "config", "@TLSCFG@")

request_route {
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (is_method("OPTIONS")) {
		sl_send_reply("200", "OK");
		exit;
	}
	if (is_method("MESSAGE") && $rd == "third.test") {
		xlog("L_NOTICE", "PARTNER-IM from=$fu to=$tu body=$rb trust=$hdr(ms-edge-proxy-message-trust)\n");
		sl_send_reply("200", "OK");
		if ($rb =~ "^echo") {
			exit;
		}
		$uac_req(method) = "MESSAGE";
		$uac_req(ruri) = $fu;
		$uac_req(furi) = "sip:carol@third.test";
		$uac_req(turi) = $fu;
		$uac_req(ouri) = "sip:@EDGE@:5061;transport=tls";
		$uac_req(hdrs) = "Content-Type: text/plain\r\n";
		$uac_req(body) = "echo: " + $rb;
		uac_req_send();
		exit;
	}
	sl_send_reply("403", "Forbidden");
}
`

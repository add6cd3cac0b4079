// Package testdns is a DNS server for tests (github.com/miekg/dns): tests
// never resolve through the machine's resolver, they run this one on
// loopback or inside their own network namespaces and point the code at it.
package testdns

import (
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"

	"github.com/miekg/dns"
)

// Server answers from records set by the test; other names get NXDOMAIN.
type Server struct {
	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case owner name and type
	udp     *dns.Server
	tcp     *dns.Server
	queries map[string]int
}

// Start serves UDP and TCP on addr (host:port; port 0 picks one, the same
// for both: a port free for UDP may be taken for TCP by another test, so
// with port 0 it tries again on another).
func Start(addr string) (*Server, error) {
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return Serve(pc, ln), nil
		}
		pc.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" || !errors.Is(err, syscall.EADDRINUSE) || try == 20 {
			return nil, err
		}
	}
}

// Serve answers on sockets the caller bound (e.g. inside a namespace).
func Serve(pc net.PacketConn, ln net.Listener) *Server {
	s := &Server{records: map[string][]dns.RR{}, queries: map[string]int{}}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", s.answer)
	s.udp = &dns.Server{PacketConn: pc, Handler: mux}
	s.tcp = &dns.Server{Listener: ln, Handler: mux}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go func() { _ = s.udp.ActivateAndServe() }()
	go func() { _ = s.tcp.ActivateAndServe() }()
	<-started
	<-started
	return s
}

// Addr is the UDP (and TCP) address.
func (s *Server) Addr() string { return s.udp.PacketConn.LocalAddr().String() }

// Add adds records in zone-file syntax, e.g.
// "_sipfederationtls._tcp.partner.test. 60 IN SRV 0 0 5061 sip.partner.test.".
func (s *Server) Add(lines ...string) error {
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			return err
		}
		k := key(rr.Header().Name, rr.Header().Rrtype)
		s.mu.Lock()
		s.records[k] = append(s.records[k], rr)
		s.mu.Unlock()
	}
	return nil
}

// Remove drops every record of name.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.records {
		if strings.HasPrefix(k, strings.ToLower(dns.Fqdn(name))+"/") {
			delete(s.records, k)
		}
	}
}

// Queries is how many times name was asked (any type).
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[strings.ToLower(dns.Fqdn(name))]
}

func key(name string, t uint16) string { return strings.ToLower(name) + "/" + dns.TypeToString[t] }

func (s *Server) answer(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) == 1 {
		q := r.Question[0]
		s.mu.Lock()
		s.queries[strings.ToLower(q.Name)]++
		rrs := s.records[key(q.Name, q.Qtype)]
		known := false
		for k := range s.records {
			if strings.HasPrefix(k, strings.ToLower(q.Name)+"/") {
				known = true
			}
		}
		s.mu.Unlock()
		m.Answer = append(m.Answer, rrs...)
		if !known {
			m.Rcode = dns.RcodeNameError
		}
	}
	_ = w.WriteMsg(m)
}

// Close stops serving.
func (s *Server) Close() {
	_ = s.udp.Shutdown()
	_ = s.tcp.Shutdown()
}

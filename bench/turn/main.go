// Command turnload is a TURN relay load tool: it opens N sessions (Allocate
// + ChannelBind to a local UDP echo peer), sends ChannelData through the
// relay at a set rate or as fast as a window allows, for a bounded time, and
// reports relayed packets/s, loss, round-trip percentiles, allocations/s and
// — given the server's pid — its memory per allocation and CPU seconds per
// million relayed packets, read from /proc.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"

	"portcullis/access"
	"portcullis/bench/internal/proc"
	"portcullis/bench/internal/stats"
)

type options struct {
	server   string
	secret   string
	realm    string
	sessions int
	duration time.Duration
	rate     int // packets per second in all; 0: closed loop
	window   int
	size     int
	pid      int
	label    string
	readers  int
}

// Result is one run's figures.
type Result struct {
	Label         string  `json:"label"`
	Sessions      int     `json:"sessions"`
	OfferedPPS    int     `json:"offered_pps"` // 0: closed loop
	Sent          int64   `json:"sent"`
	Received      int64   `json:"received"`
	PeerReceived  int64   `json:"peer_received"`
	LossPct       float64 `json:"loss_pct"`
	RelayedPPS    float64 `json:"relayed_pps"` // both directions
	RTTP50us      float64 `json:"rtt_p50_us"`
	RTTP99us      float64 `json:"rtt_p99_us"`
	AllocsPerSec  float64 `json:"allocations_per_sec"`
	MemPerAllocKB float64 `json:"server_kb_per_allocation"`
	// Kernel memory is in no process's RSS: the server's descriptors per
	// allocation, and the machine's slab growth per allocation (which
	// includes the load tool's own socket for the session, the same
	// against either server).
	FDsPerAlloc      float64 `json:"server_fds_per_allocation"`
	SlabPerAllocKB   float64 `json:"machine_slab_kb_per_allocation"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	CPUSecPerMillion float64 `json:"server_cpu_seconds_per_million_packets"`
	PacketsPerCPUSec float64 `json:"relayed_packets_per_server_cpu_second"`
}

func main() {
	var o options
	var secretFile string
	flag.StringVar(&o.server, "server", "127.0.0.1:3478", "TURN server (UDP)")
	flag.StringVar(&o.secret, "secret", "", "TURN REST shared secret")
	flag.StringVar(&secretFile, "secret-file", "", "file holding the shared secret")
	flag.StringVar(&o.realm, "realm", "example.test", "realm")
	flag.IntVar(&o.sessions, "sessions", 100, "TURN sessions")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "traffic time (bounded)")
	flag.IntVar(&o.rate, "rate", 0, "packets per second across all sessions (0: as fast as the window allows)")
	flag.IntVar(&o.window, "window", 32, "packets in flight per session in closed-loop mode")
	flag.IntVar(&o.size, "size", 172, "ChannelData payload bytes (172: G.711 20 ms + RTP header)")
	flag.IntVar(&o.pid, "pid", 0, "server pid, for memory and CPU from /proc")
	flag.StringVar(&o.label, "label", "server", "name in the report")
	flag.IntVar(&o.readers, "peer-readers", 2, "echo peer sockets (SO_REUSEPORT)")
	flag.Parse()
	if secretFile != "" {
		s, err := access.LoadTURNSecret(secretFile)
		if err != nil {
			fail(err)
		}
		o.secret = string(s)
	}
	if o.secret == "" || o.sessions < 1 || o.sessions > 5000 || o.duration <= 0 || o.duration > 10*time.Minute || o.size < 16 || o.size > 1400 {
		fail(errors.New("need -secret or -secret-file; 1 <= -sessions <= 5000; 0 < -duration <= 10m; 16 <= -size <= 1400"))
	}
	r, err := run(o)
	if err != nil {
		fail(err)
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "turnload:", err)
	os.Exit(1)
}

func run(o options) (*Result, error) {
	peer, err := newEchoPeer(o.readers)
	if err != nil {
		return nil, err
	}
	defer peer.close()

	// Slab first: listing /proc/PID/fd makes kernel objects of its own.
	slab0 := proc.SlabKiB()
	rss0, fds0 := proc.RSSKiB(o.pid), proc.Descriptors(o.pid)
	t0 := time.Now()
	sessions := make([]*session, 0, o.sessions)
	defer func() {
		for _, s := range sessions {
			s.close()
		}
	}()
	for i := range o.sessions {
		s, err := openSession(o, i, peer.addr)
		if err != nil {
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
		sessions = append(sessions, s)
	}
	allocTime := time.Since(t0)
	time.Sleep(200 * time.Millisecond)
	slab1 := proc.SlabKiB()
	rss1, fds1 := proc.RSSKiB(o.pid), proc.Descriptors(o.pid)

	cpu0 := proc.CPUSeconds(o.pid)
	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	perSession := 0.0
	if o.rate > 0 {
		perSession = float64(o.rate) / float64(o.sessions)
	}
	for _, s := range sessions {
		wg.Add(2)
		go func() { defer wg.Done(); s.receive() }()
		go func() { defer wg.Done(); s.send(ctx, perSession, o.window, o.size) }()
	}
	<-ctx.Done()
	elapsed := time.Since(start)
	time.Sleep(500 * time.Millisecond) // let packets in flight come back
	cpu1 := proc.CPUSeconds(o.pid)
	for _, s := range sessions {
		s.stop()
	}
	wg.Wait()

	res := &Result{Label: o.label, Sessions: o.sessions, OfferedPPS: o.rate}
	var rtts []uint32
	for _, s := range sessions {
		res.Sent += s.sent.Load()
		res.Received += s.received.Load()
		rtts = append(rtts, s.rtts...)
	}
	res.PeerReceived = peer.got.Load()
	if res.Sent > 0 {
		res.LossPct = 100 * float64(res.Sent-res.Received) / float64(res.Sent)
	}
	relayed := float64(res.PeerReceived + res.Received)
	res.RelayedPPS = relayed / elapsed.Seconds()
	p50, p99, _ := stats.Percentiles(rtts)
	res.RTTP50us, res.RTTP99us = float64(p50), float64(p99)
	res.AllocsPerSec = float64(o.sessions) / allocTime.Seconds()
	if o.pid > 0 {
		res.MemPerAllocKB = float64(rss1-rss0) / float64(o.sessions)
		res.FDsPerAlloc = float64(fds1-fds0) / float64(o.sessions)
		res.SlabPerAllocKB = float64(slab1-slab0) / float64(o.sessions)
		res.ServerCPUSeconds = cpu1 - cpu0
		if relayed > 0 {
			res.CPUSecPerMillion = res.ServerCPUSeconds / relayed * 1e6
		}
		if res.ServerCPUSeconds > 0 {
			res.PacketsPerCPUSec = relayed / res.ServerCPUSeconds
		}
	}
	return res, nil
}

// session is one client: a UDP socket connected to the server, with an
// allocation and a channel bound to the echo peer.
type session struct {
	conn     *net.UDPConn
	stun     *stunClient
	sent     atomic.Int64
	received atomic.Int64
	rtts     []uint32 // microseconds, sampled by the receiver
	tokens   chan struct{}
	done     chan struct{}
}

const channel = 0x4000

func openSession(o options, i int, peer netip.AddrPort) (*session, error) {
	raddr, err := net.ResolveUDPAddr("udp", o.server)
	if err != nil {
		return nil, err
	}
	cred := access.IssueTURN([]byte(o.secret), "load"+strconv.Itoa(i), time.Hour, time.Now())
	transport := rawAttr{stun.AttrRequestedTransport, []byte{17, 0, 0, 0}}
	var conn *net.UDPConn
	var c *stunClient
	for attempt := 0; ; attempt++ {
		if conn, err = net.DialUDP("udp", nil, raddr); err != nil {
			return nil, err
		}
		_ = conn.SetReadBuffer(1 << 20)
		_ = conn.SetWriteBuffer(1 << 20)
		c = &stunClient{conn: conn, user: cred.Username, pass: cred.Password}
		err = c.do(stun.MethodAllocate, transport)
		if err == nil {
			break
		}
		conn.Close()
		// 437: the kernel gave this socket a port an earlier run's
		// allocation still holds (coturn keeps deleted allocations for a
		// while): RFC 8656 §7.2, try another 5-tuple.
		if !errors.Is(err, errMismatch) || attempt == 4 {
			return nil, fmt.Errorf("allocate: %w", err)
		}
	}
	peerAttr := setter(func(m *stun.Message) error {
		return stun.XORMappedAddress{IP: peer.Addr().AsSlice(), Port: int(peer.Port())}.AddToAs(m, stun.AttrXORPeerAddress)
	})
	if err := c.do(stun.MethodChannelBind, rawAttr{stun.AttrChannelNumber, []byte{channel >> 8, channel & 0xff, 0, 0}}, peerAttr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("channel bind: %w", err)
	}
	return &session{conn: conn, stun: c, tokens: make(chan struct{}, 1<<16), done: make(chan struct{})}, nil
}

// send sends ChannelData: paced at pps, or keeping window packets in
// flight (a slot is given up after 50 ms so that loss cannot stall it).
func (s *session) send(ctx context.Context, pps float64, window, size int) {
	frame := make([]byte, 4+(size+3)&^3)
	binary.BigEndian.PutUint16(frame[0:], channel)
	binary.BigEndian.PutUint16(frame[2:], uint16(size))
	var interval time.Duration
	if pps > 0 {
		interval = time.Duration(float64(time.Second) / pps)
	} else {
		for range window {
			s.tokens <- struct{}{}
		}
	}
	next := time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				timer.Reset(d)
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
			}
		} else {
			timer.Reset(50 * time.Millisecond)
			select {
			case <-ctx.Done():
				return
			case <-s.tokens:
			case <-timer.C:
			}
		}
		binary.BigEndian.PutUint64(frame[4:], uint64(time.Now().UnixNano()))
		if _, err := s.conn.Write(frame); err == nil {
			s.sent.Add(1)
		}
	}
}

func (s *session) receive() {
	buf := make([]byte, 2048)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return
		}
		if n < 12 || buf[0]>>6 != 1 {
			continue // STUN (a late answer): not data
		}
		s.received.Add(1)
		sentAt := int64(binary.BigEndian.Uint64(buf[4:12]))
		if c := s.received.Load(); c%8 == 0 { // sample one in eight
			s.rtts = append(s.rtts, uint32(max(0, time.Now().UnixNano()-sentAt)/1000))
		}
		select {
		case s.tokens <- struct{}{}:
		default:
		}
	}
}

// stop ends the receiver: a read deadline in the past wakes it.
func (s *session) stop() { _ = s.conn.SetReadDeadline(time.Unix(1, 0)) }

// close deletes the allocation (Refresh, lifetime 0) so that a later run
// reusing this port gets no 437, and closes the socket.
func (s *session) close() {
	_ = s.stun.do(stun.MethodRefresh, rawAttr{stun.AttrLifetime, []byte{0, 0, 0, 0}})
	s.conn.Close()
}

// echoPeer sends every datagram back (several SO_REUSEPORT sockets).
type echoPeer struct {
	addr  netip.AddrPort
	socks []*net.UDPConn
	got   atomic.Int64
	wg    sync.WaitGroup
}

func newEchoPeer(n int) (*echoPeer, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	p := &echoPeer{}
	addr := "127.0.0.1:0"
	for i := range n {
		pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
		if err != nil {
			p.close()
			return nil, err
		}
		u := pc.(*net.UDPConn)
		_ = u.SetReadBuffer(4 << 20)
		_ = u.SetWriteBuffer(4 << 20)
		if i == 0 {
			p.addr = u.LocalAddr().(*net.UDPAddr).AddrPort()
			addr = p.addr.String()
		}
		p.socks = append(p.socks, u)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := u.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				p.got.Add(1)
				_, _ = u.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	return p, nil
}

func (p *echoPeer) close() {
	for _, s := range p.socks {
		s.Close()
	}
	p.wg.Wait()
}

// stunClient does the long-term credential exchange (RFC 8489 §9.2).
type stunClient struct {
	conn       *net.UDPConn
	user, pass string
	realm      stun.Realm
	nonce      stun.Nonce
}

type rawAttr struct {
	t stun.AttrType
	v []byte
}

func (a rawAttr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

type setter func(m *stun.Message) error

func (f setter) AddTo(m *stun.Message) error { return f(m) }

func (c *stunClient) do(method stun.Method, attrs ...stun.Setter) error {
	for attempt := 0; attempt < 6; attempt++ {
		setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		setters = append(setters, attrs...)
		if c.nonce != nil {
			setters = append(setters, stun.NewUsername(c.user), c.realm, c.nonce, stun.NewLongTermIntegrity(c.user, c.realm.String(), c.pass))
		}
		setters = append(setters, stun.Fingerprint)
		req := stun.MustBuild(setters...)
		if _, err := c.conn.Write(req.Raw); err != nil {
			return err
		}
		res, err := c.read(req.TransactionID)
		if err != nil {
			continue // lost or rate-limited: retry
		}
		if res.Type.Class == stun.ClassSuccessResponse {
			return nil
		}
		var ec stun.ErrorCodeAttribute
		_ = ec.GetFrom(res)
		if ec.Code == stun.CodeUnauthorized || ec.Code == stun.CodeStaleNonce {
			_ = c.nonce.GetFrom(res)
			_ = c.realm.GetFrom(res)
			continue
		}
		if ec.Code == stun.CodeAllocMismatch {
			return errMismatch
		}
		return fmt.Errorf("error %d", ec.Code)
	}
	return errors.New("no success after retries")
}

var errMismatch = errors.New("error 437 (allocation mismatch)")

func (c *stunClient) read(tid [stun.TransactionIDSize]byte) (*stun.Message, error) {
	buf := make([]byte, 2048)
	_ = c.conn.SetReadDeadline(time.Now().Add(time.Second))
	defer c.conn.SetReadDeadline(time.Time{})
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			return nil, err
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() == nil && m.TransactionID == tid {
			return m, nil
		}
	}
}

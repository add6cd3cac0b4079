package engine

import (
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/time/rate"

	"portcullis/access"
	"portcullis/internal/logthrottle"
	"portcullis/policy"
)

// Config is what the relay server hands the engine.
type Config struct {
	Log   *slog.Logger
	Realm string
	// Tune holds the settings a reload changes (Retune).
	Tune Tunables

	// 401 answers per source address.
	UnauthRate  rate.Limit
	UnauthBurst int

	// Loops is the number of epoll loops of the UDP data plane (0: one).
	Loops int

	// Client TCP/TLS connections open at once, per source address and in
	// all (0: no cap).
	ConnsPerAddr, ConnsMax int

	// Events for metrics; each may be nil.
	Events Events
}

// Tunables are the engine's settings that a reload changes while
// allocations go on.
type Tunables struct {
	Secret []byte
	// Previous is the secret before the last change (at RotatedAt), still
	// honoured for the credentials issued under it until PreviousUntil
	// (nil: none).
	Previous                 []byte
	RotatedAt, PreviousUntil time.Time
	Policy                   *policy.PeerPolicy

	QuotaPerUser int // active allocations per user
	QuotaTotal   int // active allocations in all
	// Alternate, when valid, turns "at capacity" from 508 into 300 Try
	// Alternate with this ALTERNATE-SERVER.
	Alternate netip.AddrPort

	// Bandwidth caps in bytes per second (0: none), with a burst of one
	// second's worth; a change applies to allocations made after it.
	AllocRate, UserRate float64

	// fromPrevious holds the clients (source and username) whose messages
	// verified under Previous (a credential issued before the change), so
	// that pion is given that key for them too. Only messages that passed
	// an integrity check add to it; a later change starts a new set.
	fromPrevious *sync.Map // signer → struct{}
}

// signer is a client and the username it signs with.
type signer struct {
	client   netip.AddrPort
	username string
}

// Events are the engine's callbacks; the relay server wires them to metrics.
type Events struct {
	AuthFailure      func(reason string)
	AllocationFailed func(reason string) // per Allocate error response, by cause
	Drop             func(reason string, n int)
	Paced            func(n int)         // bytes of a TCP relay held back to a bandwidth cap
	ConnRefused      func(reason string) // a client connection over a cap: per_address, total
	Unauth401Dropped func()
}

// Drop reasons (a fixed set: metric labels).
const (
	DropMalformed    = "malformed"
	DropNoPermission = "no_permission"
	DropNoChannel    = "no_channel"
	DropBandwidth    = "bandwidth"
	DropDeniedPeer   = "denied_peer"
	DropOverload     = "overload"
)

// Engine holds the relay's allocation table and counters.
type Engine struct {
	cfg Config
	log *slog.Logger
	// quiet carries the per-request refusal lines an unauthenticated
	// source can cause.
	quiet *logthrottle.Logger

	mu      sync.Mutex
	byRelay map[netip.AddrPort]*Alloc
	byTuple map[tuple]*Alloc
	// RFC 6062 allocations (TCP relays): by advertised relay address from
	// the listener's creation, by client 5-tuple once pion links them.
	tcpByRelay map[netip.AddrPort]*tcpAlloc
	tcpByTuple map[tuple]*tcpAlloc
	users      map[string]*user
	lapses     []lapse // places reserved by Quota, in deadline order (under mu)
	groups     map[netip.AddrPort]*Group
	active     atomic.Int64

	draining atomic.Bool
	closing  atomic.Bool
	gsoOff   atomic.Bool // the kernel refused UDP_SEGMENT (see mmsg.coalesce)

	tun    atomic.Pointer[Tunables]
	conns  connCount
	unauth *policy.SourceLimiter
	totals Totals // of allocations that have ended
	poll   *poller
}

type tuple struct{ client, local netip.AddrPort }

type user struct {
	active int
	// reserved holds, by client address, the deadlines of the places
	// Quota granted to Allocates not yet created: pion asks the quota
	// before it creates the allocation, so Allocates of one user on
	// several connections at once would all pass a count of active ones.
	// A place is taken by its allocation's creation, or lapses (the
	// creation failed; a retry from the same address takes it over).
	reserved map[netip.AddrPort]time.Time
	limiter  *rate.Limiter
}

// quotaReservation is how long a place granted by Quota waits for its
// allocation to be created.
const quotaReservation = 5 * time.Second

// Totals are relayed traffic counters. TCP relays count bytes only: a
// stream has no packets.
type Totals struct {
	ToPeerPackets, ToPeerBytes, ToClientPackets, ToClientBytes atomic.Uint64
}

// add adds o's counts to t.
func (t *Totals) add(o *Totals) {
	t.ToPeerPackets.Add(o.ToPeerPackets.Load())
	t.ToPeerBytes.Add(o.ToPeerBytes.Load())
	t.ToClientPackets.Add(o.ToClientPackets.Load())
	t.ToClientBytes.Add(o.ToClientBytes.Load())
}

// New creates an engine and starts its loops; Stop ends them.
func New(cfg Config) (*Engine, error) {
	if cfg.Events.AuthFailure == nil {
		cfg.Events.AuthFailure = func(string) {}
	}
	if cfg.Events.AllocationFailed == nil {
		cfg.Events.AllocationFailed = func(string) {}
	}
	if cfg.Events.Drop == nil {
		cfg.Events.Drop = func(string, int) {}
	}
	if cfg.Events.Paced == nil {
		cfg.Events.Paced = func(int) {}
	}
	if cfg.Events.ConnRefused == nil {
		cfg.Events.ConnRefused = func(string) {}
	}
	if cfg.Events.Unauth401Dropped == nil {
		cfg.Events.Unauth401Dropped = func() {}
	}
	e := &Engine{
		cfg:        cfg,
		log:        cfg.Log,
		quiet:      logthrottle.New(cfg.Log),
		byRelay:    map[netip.AddrPort]*Alloc{},
		byTuple:    map[tuple]*Alloc{},
		tcpByRelay: map[netip.AddrPort]*tcpAlloc{},
		tcpByTuple: map[tuple]*tcpAlloc{},
		users:      map[string]*user{},
		groups:     map[netip.AddrPort]*Group{},
		unauth:     policy.NewSourceLimiter(cfg.UnauthRate, cfg.UnauthBurst),
		conns:      connCount{per: map[netip.Addr]int{}},
	}
	t := cfg.Tune
	t.fromPrevious = &sync.Map{}
	e.tun.Store(&t)
	if err := gsoProbe(); err != nil {
		e.gsoOff.Store(true)
		e.log.Info("relay sends datagram by datagram: UDP segmentation offload unavailable", "error", err)
	}
	var err error
	if e.poll, err = newPoller(e, max(cfg.Loops, 1)); err != nil {
		return nil, err
	}
	return e, nil
}

// Stop ends the engine's loops; call it after the groups and allocations
// are closed.
func (e *Engine) Stop() { e.poll.stop() }

// Active is the number of allocations in use.
func (e *Engine) Active() int { return int(e.active.Load()) }

// Drain makes new Allocate requests fail (508, or 300 with an alternate).
func (e *Engine) Drain() { e.draining.Store(true) }

// Closing marks allocations ending from now on as ended by shutdown.
func (e *Engine) Closing() { e.closing.Store(true) }

// Traffic sums the counters of live and ended allocations.
func (e *Engine) Traffic() (toPeerPkts, toPeerBytes, toClientPkts, toClientBytes uint64) {
	toPeerPkts, toPeerBytes = e.totals.ToPeerPackets.Load(), e.totals.ToPeerBytes.Load()
	toClientPkts, toClientBytes = e.totals.ToClientPackets.Load(), e.totals.ToClientBytes.Load()
	e.mu.Lock()
	defer e.mu.Unlock()
	var live Totals
	for _, a := range e.byRelay {
		live.add(&a.stats)
	}
	for _, t := range e.tcpByRelay {
		live.add(&t.stats)
	}
	toPeerPkts += live.ToPeerPackets.Load()
	toPeerBytes += live.ToPeerBytes.Load()
	toClientPkts += live.ToClientPackets.Load()
	toClientBytes += live.ToClientBytes.Load()
	return
}

// Quota is pion's QuotaHandler: false answers 486 Allocation Quota Reached.
func (e *Engine) Quota(userID, _ string, src net.Addr) bool {
	perUser := e.tune().QuotaPerUser
	if perUser <= 0 {
		return true
	}
	client := normal(addrPort(src))
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expireLapsed(now)
	u := e.userFor(userID)
	u.lapse(now)
	delete(u.reserved, client)
	if u.active+len(u.reserved) >= perUser {
		e.dropIdle(u, userID)
		return false
	}
	if u.reserved == nil {
		u.reserved = map[netip.AddrPort]time.Time{}
	}
	u.reserved[client] = now.Add(quotaReservation)
	e.lapses = append(e.lapses, lapse{userID, now.Add(quotaReservation)})
	return true
}

// lapse is when a place Quota reserved for a user lapses.
type lapse struct {
	user  string
	until time.Time
}

// expireLapsed forgets the places whose allocation was never created by
// their deadline, and users left with nothing (under e.mu): a user whose
// Allocate failed and who does nothing more is not kept.
func (e *Engine) expireLapsed(now time.Time) {
	n := 0
	for ; n < len(e.lapses) && now.After(e.lapses[n].until); n++ {
		if u := e.users[e.lapses[n].user]; u != nil {
			u.lapse(now)
			e.dropIdle(u, e.lapses[n].user)
		}
	}
	e.lapses = e.lapses[n:] // a queue: append moves what is live when it grows
}

// lapse forgets the places reserved before now (under e.mu).
func (u *user) lapse(now time.Time) {
	maps.DeleteFunc(u.reserved, func(_ netip.AddrPort, until time.Time) bool { return now.After(until) })
	if len(u.reserved) == 0 {
		u.reserved = nil
	}
}

func (e *Engine) tune() *Tunables { return e.tun.Load() }

// Tunables returns the settings in force.
func (e *Engine) Tunables() Tunables { return *e.tune() }

// Retune applies changed settings. Permissions and channels toward peers
// the new policy denies are removed, and TCP relays' connections with them
// closed, at once: nothing more is relayed to or from them.
func (e *Engine) Retune(t Tunables) {
	t.fromPrevious = &sync.Map{}
	e.tun.Store(&t)
	e.mu.Lock()
	allocs := make([]*Alloc, 0, len(e.byRelay))
	for _, a := range e.byRelay {
		allocs = append(allocs, a)
	}
	tcps := make([]*tcpAlloc, 0, len(e.tcpByRelay))
	for _, ta := range e.tcpByRelay {
		tcps = append(tcps, ta)
	}
	e.mu.Unlock()
	for _, a := range allocs {
		a.revokeDenied(t.Policy)
	}
	for _, ta := range tcps {
		ta.revokeDenied(t.Policy)
	}
}

// Auth is pion's AuthHandler for TURN REST credentials; it returns the user
// part of the username as the user ID (quota and bandwidth are per user).
func (e *Engine) Auth(src net.Addr, username, realm string) (string, []byte, bool) {
	userID, keys, reason := e.verify(username, realm)
	if reason != "" {
		return "", nil, false
	}
	return userID, e.keyFor(signer{normal(addrPort(src)), username}, keys), true
}

// verify checks a username under realm and returns the user, the long-term
// keys it may be signed with (the current secret's, then the previous
// one's), and "" or the reason it is refused.
func (e *Engine) verify(username, realm string) (string, [][]byte, string) {
	if realm != e.cfg.Realm {
		return "", nil, "wrong_realm"
	}
	now := time.Now()
	userID, err := access.ParseTURNUsername(username, now)
	if err != nil {
		if errors.Is(err, access.ErrTURNExpired) {
			return "", nil, "expired"
		}
		return "", nil, "malformed_username"
	}
	t := e.tune()
	keys := [][]byte{access.TURNKey(username, realm, access.TURNPassword(t.Secret, username))}
	if t.Previous != nil && now.Before(t.PreviousUntil) {
		keys = append(keys, access.TURNKey(username, realm, access.TURNPassword(t.Previous, username)))
	}
	return userID, keys, ""
}

// checkIntegrity finds the key m is signed with among keys (verify's) and
// remembers which one for its signer.
func (e *Engine) checkIntegrity(m *stun.Message, who signer, keys [][]byte) ([]byte, bool) {
	for i, k := range keys {
		if stun.MessageIntegrity(k).Check(m) == nil {
			switch {
			case i > 0:
				e.tune().fromPrevious.Store(who, struct{}{})
			case len(keys) > 1:
				e.tune().fromPrevious.Delete(who)
			}
			return k, true
		}
	}
	return nil, false
}

// keyFor is the key a verified signer's messages are signed with.
func (e *Engine) keyFor(who signer, keys [][]byte) []byte {
	if len(keys) > 1 {
		if _, ok := e.tune().fromPrevious.Load(who); ok {
			return keys[1]
		}
	}
	return keys[0]
}

// filter is the front filter for one STUN message from a client: it answers
// what pion must not see or would answer wrongly, and reports whether the
// message should go on to pion, with the long-term key its integrity was
// checked with (nil when it carried none). reply writes an answer to the
// client. udp says whether the client's source address is unproven (UDP):
// only then can an answer be used to amplify, so only then are 401s
// rate-limited.
func (e *Engine) filter(b []byte, h header, client, local netip.AddrPort, udp bool, reply func([]byte)) (pass bool, key []byte) {
	if !knownMethod(h) {
		if h.class == classRequest {
			// RFC 8489 §6.3.1: an unknown method in a request gets 400.
			e.answer(b, h, nil, reply, stun.CodeBadRequest)
		}
		return false, nil
	}
	if !authenticated(h) {
		return true, nil
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		e.cfg.Events.Drop(DropMalformed, len(b))
		return false, nil
	}
	if !m.Contains(stun.AttrMessageIntegrity) {
		return true, nil // pion challenges with 401 + NONCE; WriteTo rate-limits it
	}
	var username stun.Username
	var realm stun.Realm
	var nonce stun.Nonce
	if username.GetFrom(m) != nil || realm.GetFrom(m) != nil || nonce.GetFrom(m) != nil {
		return true, nil // pion answers 400
	}
	_, keys, reason := e.verify(username.String(), realm.String())
	if reason == "" {
		var ok bool
		if key, ok = e.checkIntegrity(m, signer{normal(client), username.String()}, keys); !ok {
			reason = "bad_integrity"
		}
	}
	if reason != "" {
		// RFC 8489 §9.2.4: an invalid username or integrity gets 401 with
		// REALM and NONCE (the client's nonce: still one pion accepts).
		e.cfg.Events.AuthFailure(reason)
		e.quiet.Info("turn auth refused", "client", client.String(), "reason", reason, "method", methodName(h.method))
		if h.method == methodAllocate {
			e.cfg.Events.AllocationFailed("unauthorized")
		}
		if !udp || e.unauth.Allow(client.Addr()) {
			e.answer(b, h, nil, reply, stun.CodeUnauthorized, stun.NewRealm(e.cfg.Realm), nonce)
		} else {
			e.cfg.Events.Unauth401Dropped()
		}
		return false, nil
	}
	switch h.method {
	case methodRefresh, methodCreatePermission, methodChannelBind, methodConnect:
		// RFC 8656 §7.3, §9.2, §11.2: a request on a 5-tuple without an
		// allocation gets 437 (pion answers nothing).
		if !e.hasAllocation(client, local) {
			e.answer(b, h, key, reply, stun.CodeAllocMismatch)
			return false, nil
		}
	}
	switch h.method {
	case methodCreatePermission, methodChannelBind:
		// RFC 8656 §9.1, §11.2: a peer the policy refuses gets 403. (pion
		// would answer ChannelBind with 401; its PermissionHandler stays as a
		// second check.)
		if peer, ok := e.deniedPeer(m); ok {
			e.quiet.Info("turn peer refused", "client", client.String(), "peer", peer.String(), "method", methodName(h.method))
			e.cfg.Events.Drop(DropDeniedPeer, 0)
			e.answer(b, h, key, reply, stun.CodeForbidden)
			return false, nil
		}
	case methodAllocate:
		if total := e.tune().QuotaTotal; e.draining.Load() || (total > 0 && e.Active() >= total) {
			e.atCapacity(b, h, key, reply)
			return false, nil
		}
	case methodRefresh:
		var lt lifetime
		if lt.GetFrom(m) == nil && lt == 0 {
			e.markClientDelete(client, local)
		}
	}
	return true, key
}

func (e *Engine) hasAllocation(client, local netip.AddrPort) bool {
	t := tuple{normal(client), normal(local)}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byTuple[t] != nil || e.tcpByTuple[t] != nil
}

// deniedPeer returns the first XOR-PEER-ADDRESS in m that the policy
// refuses.
func (e *Engine) deniedPeer(m *stun.Message) (netip.Addr, bool) {
	for _, a := range m.Attributes {
		if a.Type != stun.AttrXORPeerAddress {
			continue
		}
		one := &stun.Message{TransactionID: m.TransactionID}
		one.Add(stun.AttrXORPeerAddress, a.Value)
		var x stun.XORMappedAddress
		if err := x.GetFromAs(one, stun.AttrXORPeerAddress); err != nil {
			continue // pion answers 400
		}
		ip, ok := netip.AddrFromSlice(x.IP)
		if !ok || e.tune().Policy.Check(ip) != policy.Allowed {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// atCapacity answers 300 Try Alternate (RFC 8489 §10, [MS-TURN]) when an
// alternate edge is configured, else 508 Insufficient Capacity (RFC 8656 §7.2).
func (e *Engine) atCapacity(b []byte, h header, key []byte, reply func([]byte)) {
	if a := e.tune().Alternate; a.IsValid() {
		e.cfg.Events.AllocationFailed("try_alternate")
		alt := &stun.AlternateServer{IP: a.Addr().AsSlice(), Port: int(a.Port())}
		e.answer(b, h, key, reply, stun.CodeTryAlternate, alt)
		return
	}
	e.cfg.Events.AllocationFailed("insufficient_capacity")
	e.answer(b, h, key, reply, stun.CodeInsufficientCapacity)
}

// answer sends an error response to the request in b.
func (e *Engine) answer(b []byte, h header, key []byte, reply func([]byte), code stun.ErrorCode, attrs ...stun.Setter) {
	var tid [stun.TransactionIDSize]byte
	copy(tid[:], b[8:20])
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(tid),
		stun.NewType(stun.Method(h.method), stun.ClassErrorResponse),
		code,
	}
	setters = append(setters, attrs...)
	if key != nil {
		setters = append(setters, stun.MessageIntegrity(key))
	}
	setters = append(setters, stun.Fingerprint)
	m, err := stun.Build(setters...)
	if err != nil {
		e.log.Warn("building STUN answer failed", "error", err)
		return
	}
	reply(m.Raw)
}

// lifetime is the LIFETIME attribute (RFC 8656 §18.2).
type lifetime uint32

func (l *lifetime) GetFrom(m *stun.Message) error {
	v, err := m.Get(stun.AttrLifetime)
	if err != nil {
		return err
	}
	if len(v) != 4 {
		return stun.ErrAttributeSizeInvalid
	}
	*l = lifetime(uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3]))
	return nil
}

func methodName(m uint16) string {
	return stun.Method(m).String()
}

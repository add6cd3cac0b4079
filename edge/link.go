package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/internal/sipnode"
)

// ErrLinkDown is the reason /readyz gives while no keepalive has succeeded.
var ErrLinkDown = errors.New("link to core is down")

// link keeps the edge's mutual-TLS SIP connection to the core alive: an
// OPTIONS keepalive every interval on the one pooled connection, which the
// node dials again (sipnode.Connect) when the previous one has gone; on
// failure the dead connection is closed and the edge retries with
// exponential backoff and jitter.
type link struct {
	node   *sipnode.Node
	log    *slog.Logger
	target sip.Uri
	addr   string // resolved host:port of the core, for the connection pool
	timing atomic.Pointer[LinkConfig]
	events linkEvents

	mu       sync.Mutex
	up       bool
	reported bool // a state has been logged at least once
	lastErr  error
}

type linkEvents struct {
	onUp   func()
	onDown func()
	onPing func(ok bool)
}

func newLink(node *sipnode.Node, cfg LinkConfig, log *slog.Logger, ev linkEvents) (*link, error) {
	host, portStr, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(portStr)
	l := &link{
		node:    node,
		log:     log,
		target:  sip.Uri{Scheme: "sip", Host: host, Port: port, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}},
		addr:    cfg.Address,
		events:  ev,
		lastErr: errors.New("not connected yet"),
	}
	l.timing.Store(&cfg)
	return l, nil
}

// Ready is nil when the last keepalive succeeded.
func (l *link) Ready() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.up {
		return nil
	}
	return fmt.Errorf("%w: %v", ErrLinkDown, l.lastErr)
}

// run keeps the link until ctx ends.
func (l *link) run(ctx context.Context) {
	backoff := l.timing.Load().ReconnectMin
	for {
		t := l.timing.Load()
		err := l.ping(ctx, t.KeepaliveTimeout)
		if ctx.Err() != nil {
			return
		}
		l.events.onPing(err == nil)
		wait := t.KeepaliveInterval
		if err == nil {
			l.setUp()
			backoff = t.ReconnectMin
		} else {
			l.setDown(err)
			l.dropConnection()
			// Full jitter on an exponential backoff (AWS architecture blog),
			// never below ReconnectMin so a dead core is not hammered.
			wait = t.ReconnectMin + rand.N(backoff)
			backoff = min(2*backoff, t.ReconnectMax)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// ping sends one OPTIONS (RFC 3261 §11) and waits for a 200.
func (l *link) ping(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := l.node.Connect(ctx, l.addr); err != nil {
		return err
	}
	req := sip.NewRequest(sip.OPTIONS, l.target)
	res, err := l.node.Client.Do(ctx, req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer to OPTIONS within %s", timeout)
		}
		return err
	}
	if res.StatusCode != 200 {
		return fmt.Errorf("core answered OPTIONS with %d %s", res.StatusCode, res.Reason)
	}
	return nil
}

// dropConnection closes the pooled connection to the core, if any, so that
// the next attempt dials afresh instead of writing into a dead socket.
func (l *link) dropConnection() {
	addrs := []string{l.addr}
	if host, port, err := net.SplitHostPort(l.addr); err == nil && net.ParseIP(host) == nil {
		// sipgo pools connections by resolved address
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ips, _ := net.DefaultResolver.LookupHost(ctx, host)
		cancel()
		for _, ip := range ips {
			addrs = append(addrs, net.JoinHostPort(ip, port))
		}
	}
	tp := l.node.UA.TransportLayer()
	for _, a := range addrs {
		if c, err := tp.GetConnection("tls", a); err == nil && c != nil {
			_ = c.Close()
		}
	}
}

func (l *link) setUp() {
	l.mu.Lock()
	was := l.up
	l.up, l.lastErr, l.reported = true, nil, true
	l.mu.Unlock()
	if !was {
		l.log.Info("link to core up", "core", l.addr)
		l.events.onUp()
	}
}

func (l *link) setDown(err error) {
	l.mu.Lock()
	changed := l.up || !l.reported
	l.up, l.lastErr, l.reported = false, err, true
	l.mu.Unlock()
	if changed {
		l.log.Warn("link to core down", "core", l.addr, "error", err)
		l.events.onDown()
	} else {
		l.log.Debug("link to core still down", "core", l.addr, "error", err)
	}
}

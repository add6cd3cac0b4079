package core

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/core/c3p"
	"portcullis/core/confinfo"
)

// The IM MCU: group IM in a meeting. A participant's MESSAGE to the
// conference (in their join dialog) reaches every other participant in the
// chat, in each one's own dialog, with the sender named in Referred-By
// (RFC 3892). Participants joined later receive nothing sent before: there
// is no history.
//
// Each IM MCU is its own component: it registers with the Conferencing
// Server Factory by heartbeat over HTTPS like a remote MCU would, and hosts
// the meetings the factory provisions on it.

// IMMCU is one IM MCU.
type IMMCU struct {
	id       string
	fanout   int
	rep      *reporter
	every    func() time.Duration
	log      *slog.Logger
	stopped  atomic.Bool
	mu       sync.Mutex
	meetings map[string]bool
}

// ErrMCUStopped is returned by a stopped MCU.
var ErrMCUStopped = errors.New("IM MCU stopped")

// ID names the MCU.
func (m *IMMCU) ID() string { return m.id }

// Meetings lists the meetings the MCU hosts.
func (m *IMMCU) Meetings() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for id := range m.meetings {
		out = append(out, id)
	}
	return out
}

// Stop takes the MCU away as if its process had died: no more heartbeats,
// no more deliveries.
func (m *IMMCU) Stop() { m.stopped.Store(true) }

func (m *IMMCU) host(meeting string) {
	m.mu.Lock()
	m.meetings[meeting] = true
	m.mu.Unlock()
}

func (m *IMMCU) release(meeting string) {
	m.mu.Lock()
	delete(m.meetings, meeting)
	m.mu.Unlock()
}

func (m *IMMCU) state() c3p.MCU {
	m.mu.Lock()
	defer m.mu.Unlock()
	return c3p.MCU{ID: m.id, Type: MediaChat, URI: "internal:" + m.id, Load: len(m.meetings)}
}

// heartbeat reports once.
func (m *IMMCU) heartbeat(ctx context.Context) error {
	if m.stopped.Load() {
		return ErrMCUStopped
	}
	return m.rep.report(ctx, m.state())
}

// run reports every interval until ctx ends or the MCU stops.
func (m *IMMCU) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.every()):
		}
		if m.stopped.Load() {
			return
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := m.heartbeat(hctx); err != nil && ctx.Err() == nil {
			m.log.Warn("mcu heartbeat failed", "mcu", m.id, "error", err)
		}
		cancel()
	}
}

// message is a participant's IM to the meeting.
func (f *focus) message(req *sip.Request, tx sip.ServerTransaction) {
	fm := f.fm
	p := f.participantOf(req)
	if p == nil {
		fm.refuse(tx, req, 403, "Forbidden (IM to a meeting goes in the sender's conference dialog)", "im_not_participant")
		return
	}
	f.mu.Lock()
	ok := p.status == confinfo.Connected && p.chat
	var to []*participant
	for _, q := range f.parts {
		if q != p && q.status == confinfo.Connected && q.chat {
			to = append(to, q)
		}
	}
	mcu := f.mcu
	f.mu.Unlock()
	if !ok {
		fm.refuse(tx, req, 403, "Forbidden (not in the meeting's chat)", "im_not_in_chat")
		return
	}
	if !p.im.Allow() {
		fm.refuse(tx, req, 503, "Service Unavailable (too many messages to the meeting)", "im_rate", sip.NewHeader("Retry-After", "1"))
		return
	}
	if mcu == nil || mcu.stopped.Load() {
		fm.refuse(tx, req, 503, "Service Unavailable (no IM MCU for this meeting)", "no_im_mcu", sip.NewHeader("Retry-After", "5"))
		return
	}
	fm.respond(tx, req, 200, "OK")
	ct := "text/plain"
	if h := req.ContentType(); h != nil {
		ct = h.Value()
	}
	go mcu.deliver(f, p, to, ct, req.Body())
}

// deliver sends one message to every recipient, at most fanout at once.
func (m *IMMCU) deliver(f *focus, from *participant, to []*participant, contentType string, body []byte) {
	sem := make(chan struct{}, max(m.fanout, 1))
	var wg sync.WaitGroup
	for _, q := range to {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			req := q.dlg.request(sip.MESSAGE)
			req.AppendHeader(sip.NewHeader("Referred-By", "<"+from.entity+">"))
			req.AppendHeader(sip.NewHeader("Content-Type", contentType))
			req.SetBody(body)
			ctx, cancel := context.WithTimeout(f.fm.ctx, 10*time.Second)
			defer cancel()
			if status, err := q.dlg.send(ctx, f.fm.node, req); err != nil {
				f.fm.log.Info("group IM not delivered", "conference", f.uri, "to", q.entity, "status", status, "error", err)
			}
		}()
	}
	wg.Wait()
}

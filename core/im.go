package core

import (
	"context"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/core/confinfo"
)

// The IM MCU: group IM in a meeting. A participant's MESSAGE to the
// conference (in their join dialog) reaches every other participant in the
// chat, in each one's own dialog, with the sender named in Referred-By
// (RFC 3892). Participants joined later receive nothing sent before: there
// is no history.

// imMCU fans messages out; it is its own component behind the Focus (the
// Conferencing Server Factory's interface), though it runs in the core.
type imMCU struct {
	// fanout bounds the MESSAGEs in flight for one message.
	fanout int
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
	f.mu.Unlock()
	if !ok {
		fm.refuse(tx, req, 403, "Forbidden (not in the meeting's chat)", "im_not_in_chat")
		return
	}
	fm.respond(tx, req, 200, "OK")
	ct := "text/plain"
	if h := req.ContentType(); h != nil {
		ct = h.Value()
	}
	go fm.mcu.deliver(f, p, to, ct, req.Body())
}

// deliver sends one message to every recipient, at most fanout at once.
func (m *imMCU) deliver(f *focus, from *participant, to []*participant, contentType string, body []byte) {
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

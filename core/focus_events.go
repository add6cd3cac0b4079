package core

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/core/confinfo"
)

// The conference event package (RFC 6665, RFC 4575): a participant
// subscribes to the conference URI and gets full state first, then a
// partial document with the next version for every change. Each
// subscription has its own queue, so that its NOTIFYs leave in order and a
// slow subscriber holds up no one else.

// maxSubExpires bounds a subscription's life between refreshes.
const maxSubExpires = time.Hour

// subscription is one subscriber's dialog and what it has been sent.
type subscription struct {
	entity  string
	part    *participant // the participant it was made for (a re-join makes another)
	dlg     *uasDialog
	expires time.Time
	sent    uint64      // the last version sent; the notifier's own
	lost    atomic.Bool // a document did not fit in the queue: send full state next
	// pending: the subscriber was in the lobby when last notified (it saw
	// only itself); admitted, it gets full state.
	pending bool
	queue   chan notifyJob
	done    chan struct{}
	once    sync.Once
}

// finish ends the subscription's notifier after what is queued.
func (s *subscription) finish() { s.once.Do(func() { close(s.done) }) }

type notifyJob struct {
	doc   *confinfo.Info
	state string // Subscription-State
}

// queueLen bounds a subscription's backlog; a subscriber that falls this
// far behind is sent full state when it catches up.
const queueLen = 64

func (f *focus) subscribe(ctx context.Context, peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	fm := f.fm
	if ev := req.GetHeader("Event"); ev == nil || !strings.EqualFold(strings.TrimSpace(strings.Split(ev.Value(), ";")[0]), confinfo.Event) {
		fm.refuse(tx, req, 489, "Bad Event", "bad_event", sip.NewHeader("Allow-Events", confinfo.Event))
		return
	}
	expires := maxSubExpires
	if h := req.GetHeader("Expires"); h != nil {
		n, err := strconv.Atoi(strings.TrimSpace(h.Value()))
		if err != nil || n < 0 {
			fm.refuse(tx, req, 400, "Bad Request (Expires)", "bad_expires")
			return
		}
		if n < int(maxSubExpires/time.Second) { // in seconds: a huge one cannot overflow
			expires = time.Duration(n) * time.Second
		}
	}
	callID := req.CallID().Value()
	toTag, _ := req.To().Params.Get("tag")
	fromTag, _ := req.From().Params.Get("tag")
	f.mu.Lock()
	s := f.subs[callID]
	if s != nil && (toTag != s.dlg.localTag || fromTag != s.dlg.remoteTag) {
		// The Call-ID of a subscription, but not its dialog: a refresh
		// or an unsubscribe is in-dialog (RFC 6665 §4.1.2.2), and our tag
		// is what only the subscriber knows.
		f.mu.Unlock()
		fm.refuse(tx, req, 481, "Call/Transaction Does Not Exist", "sub_other_dialog")
		return
	}
	if s != nil { // a refresh or an unsubscribe (RFC 6665 §4.1.2)
		if expires == 0 {
			delete(f.subs, callID)
		} else {
			// A refresh gets full state (RFC 6665 §4.2.1.2, RFC 4575 §4.6):
			// it is how a subscriber that saw a gap catches up. It is queued
			// under the lock, so that no later change is queued before it.
			s.expires = time.Now().Add(expires)
			s.push(notifyJob{doc: f.fullDocFor(s), state: "active;expires=" + strconv.Itoa(int(expires/time.Second))})
		}
		f.mu.Unlock()
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		res.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(int(expires/time.Second))))
		_ = tx.Respond(res)
		if expires == 0 {
			s.push(notifyJob{doc: f.deletedDocFor(s), state: "terminated;reason=timeout"})
			s.finish()
			f.dropIfEmpty()
		}
		return
	}
	f.mu.Unlock()
	// A new subscription: the subscriber authenticates as for joining and
	// must be a participant.
	j, ok := f.identify(ctx, peer, req, tx)
	if !ok {
		return
	}
	f.mu.Lock()
	p := f.parts[j.entity]
	if p == nil {
		f.mu.Unlock()
		fm.refuse(tx, req, 403, "Forbidden (join the conference before subscribing)", "conf_not_participant")
		return
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	tag, _ := res.To().Params.Get("tag")
	if tag == "" {
		tag = sip.GenerateTagN(16)
		res.To().Params.Add("tag", tag)
	}
	s = &subscription{entity: p.entity, part: p, dlg: newUASDialog(req, tag, f.fm.node.Flow(req.Source()), viaPeer(peer)), expires: time.Now().Add(expires),
		pending: p.status == confinfo.Pending, queue: make(chan notifyJob, queueLen), done: make(chan struct{})}
	// One subscription per participant: a new one replaces theirs (a client
	// that lost its dialog subscribes again), so that nobody can pile up
	// subscriptions, each a goroutine, a queue and a NOTIFY per roster
	// change.
	f.dropSubsOf(p)
	f.subs[callID] = s
	// Full state is queued under the lock: a change made after it was
	// built is queued after it (the NOTIFY may reach the subscriber
	// before the 200, as RFC 6665 §4.1.2.4 allows).
	s.push(notifyJob{doc: f.fullDocFor(s), state: "active;expires=" + strconv.Itoa(int(expires/time.Second))})
	f.mu.Unlock()
	res.AppendHeader(&sip.ContactHeader{Address: confURI(f.uri)})
	res.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(int(expires/time.Second))))
	if err := tx.Respond(res); err != nil {
		fm.log.Warn("answering SUBSCRIBE failed", "error", err)
	}
	fm.startNotifier(f, s)
}

// push queues a document; when the queue is full the document is dropped
// and the subscriber gets full state instead as soon as it can.
func (s *subscription) push(j notifyJob) {
	select {
	case s.queue <- j:
	default:
		s.lost.Store(true)
	}
}

// merge folds job b (newer) into a when both are live documents: full
// state replaces, a partial document's users replace or remove a's. The
// subscriber then gets one NOTIFY for a burst of changes (a join wave).
func merge(a, b notifyJob) (notifyJob, bool) {
	if !strings.HasPrefix(b.state, "active") || !strings.HasPrefix(a.state, "active") || a.doc.State == confinfo.Deleted {
		return a, false
	}
	switch b.doc.State {
	case confinfo.Full:
		return b, true
	case confinfo.Deleted:
		return a, false
	}
	out := *a.doc
	users := &confinfo.Users{}
	index := map[string]int{}
	if a.doc.Users != nil {
		for _, u := range a.doc.Users.Users {
			index[u.Entity] = len(users.Users)
			users.Users = append(users.Users, u)
		}
	}
	if b.doc.Users != nil {
		for _, u := range b.doc.Users.Users {
			i, seen := index[u.Entity]
			switch {
			case u.State == confinfo.Deleted && out.State == confinfo.Full:
				if seen {
					users.Users[i].Entity = "" // removed below
				}
			case seen:
				users.Users[i] = u
			default:
				index[u.Entity] = len(users.Users)
				users.Users = append(users.Users, u)
			}
		}
	}
	users.Users = slices.DeleteFunc(users.Users, func(u confinfo.User) bool { return u.Entity == "" })
	out.Users = users
	if b.doc.ConfState != nil {
		out.ConfState = b.doc.ConfState
	}
	return notifyJob{doc: &out, state: a.state}, true
}

// notifier sends a subscription's NOTIFYs in order until it ends, folding
// the documents queued behind the one at hand into it, and numbering them.
func (f *focus) notifier(s *subscription) {
	send := func(j notifyJob) {
		for more := true; more; {
			select {
			case next := <-s.queue:
				var ok bool
				if j, ok = merge(j, next); !ok {
					f.sendJob(s, j)
					j = next
				}
			default:
				more = false
			}
		}
		f.sendJob(s, j)
		if s.lost.Swap(false) {
			// A document was dropped: what is queued is older than the
			// state now, which goes out whole instead.
			f.mu.Lock()
			for drained := false; !drained; {
				select {
				case <-s.queue:
				default:
					drained = true
				}
			}
			full := f.fullDocFor(s)
			f.mu.Unlock()
			f.sendJob(s, notifyJob{doc: full, state: "active"})
		}
	}
	for {
		select {
		case j := <-s.queue:
			send(j)
		case <-f.fm.ctx.Done():
			return
		case <-s.done:
			for { // what is left (the final NOTIFY), then stop
				select {
				case j := <-s.queue:
					send(j)
				default:
					return
				}
			}
		}
	}
}

// sendJob numbers a document (the next version of this subscription) and
// sends it.
func (f *focus) sendJob(s *subscription, j notifyJob) {
	s.sent++
	doc := *j.doc
	doc.Version = s.sent
	ctx, cancel := context.WithTimeout(f.fm.ctx, 10*time.Second)
	defer cancel()
	f.sendNotify(ctx, s, &doc, j.state)
}

func (f *focus) sendNotify(ctx context.Context, s *subscription, doc *confinfo.Info, state string) {
	r := s.dlg.request(sip.NOTIFY)
	r.AppendHeader(sip.NewHeader("Event", confinfo.Event))
	r.AppendHeader(sip.NewHeader("Subscription-State", state))
	r.AppendHeader(sip.NewHeader("Content-Type", confinfo.ContentType))
	r.AppendHeader(&sip.ContactHeader{Address: confURI(f.uri)})
	r.SetBody(confinfo.Marshal(doc))
	status, err := s.dlg.send(ctx, f.fm.node, r)
	if err == nil {
		return
	}
	f.fm.log.Info("NOTIFY failed", "conference", f.uri, "subscriber", s.entity, "status", status, "error", err)
	if status == 481 || status == 408 || status == 430 || status == 0 {
		// The subscription is gone (RFC 6665 §4.1.3), or its subscriber is
		// unreachable (430: its connection is gone, RFC 5626): a
		// participant who vanished without a BYE leaves.
		f.mu.Lock()
		delete(f.subs, s.dlg.callID)
		f.mu.Unlock()
		s.finish()
		if f.fm.ctx.Err() == nil { // not when the core is closing
			f.vanished(s.part)
		}
	}
}

// vanished removes a participant that no longer answers (no BYE came),
// unless they have joined again since.
func (f *focus) vanished(p *participant) {
	entity := p.entity
	f.mu.Lock()
	current := f.parts[entity] == p
	if current {
		delete(f.parts, entity)
		delete(f.byCall, p.dlg.callID)
	}
	f.mu.Unlock()
	if !current {
		return
	}
	f.fm.log.Info("participant unreachable: removed", "conference", f.uri, "user", entity)
	f.changed(nil, []string{entity})
	f.dropIfEmpty()
}

// userOf is a participant's roster entry.
func (f *focus) userOf(p *participant) confinfo.User {
	u := confinfo.User{Entity: p.entity, DisplayText: p.display, Roles: []string{p.role}, State: confinfo.Full}
	ep := confinfo.Endpoint{Entity: p.entity, Status: p.status, JoiningMethod: "dialed-in"}
	if p.chat && p.status == confinfo.Connected {
		ep.Media = []confinfo.Media{{ID: p.chatMediaID, Type: "message", Status: "sendrecv"}}
	}
	u.Endpoints = []confinfo.Endpoint{ep}
	return u
}

// confState is conference-state now (the focus lock held).
func (f *focus) confState() *confinfo.ConfState {
	n, active, locked := 0, true, f.meeting.Locked
	for _, p := range f.parts {
		if p.status == confinfo.Connected {
			n++
		}
	}
	return &confinfo.ConfState{UserCount: &n, Active: &active, Locked: &locked}
}

// fullDocFor is full state for a subscriber (the focus lock held): everyone,
// or only itself while it waits in the lobby.
func (f *focus) fullDocFor(s *subscription) *confinfo.Info {
	doc := &confinfo.Info{Entity: f.uri, State: confinfo.Full,
		Description: &confinfo.Description{Subject: f.meeting.Subject},
		HostInfo:    &confinfo.HostInfo{URI: f.organizer},
		ConfState:   f.confState(), Users: &confinfo.Users{}}
	entities := make([]string, 0, len(f.parts))
	for e := range f.parts {
		entities = append(entities, e)
	}
	slices.Sort(entities)
	for _, e := range entities {
		if s.pending && e != s.entity {
			continue
		}
		doc.Users.Users = append(doc.Users.Users, f.userOf(f.parts[e]))
	}
	return doc
}

// deletedDocFor is the final document of a subscription (the focus lock
// held).
func (f *focus) deletedDocFor(s *subscription) *confinfo.Info {
	return &confinfo.Info{Entity: f.uri, State: confinfo.Deleted}
}

func (f *focus) deletedDoc(s *subscription) *confinfo.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deletedDocFor(s)
}

// changed tells every subscriber about users that joined or changed and
// users that left, in one partial document each (full state to a
// subscriber that has just left the lobby).
func (f *focus) changed(updated, removed []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// What changed is the same for every subscriber: built once and shared
	// (documents are never changed once queued), so that one change costs
	// O(subscribers), not O(subscribers × participants).
	state := f.confState()
	var changes []confinfo.User
	for _, e := range updated {
		if p := f.parts[e]; p != nil {
			changes = append(changes, f.userOf(p)) // the whole user element: state full
		}
	}
	for _, e := range removed {
		changes = append(changes, confinfo.User{Entity: e, State: confinfo.Deleted})
	}
	shared := &confinfo.Users{Users: changes}
	now := time.Now()
	for id, s := range f.subs {
		if now.After(s.expires) {
			delete(f.subs, id)
			s.push(notifyJob{doc: f.deletedDocFor(s), state: "terminated;reason=timeout"})
			s.finish()
			continue
		}
		self := f.parts[s.entity]
		stillPending := self != nil && self.status == confinfo.Pending
		if s.pending && !stillPending {
			s.pending = false
			s.push(notifyJob{doc: f.fullDocFor(s), state: "active"})
			continue
		}
		users := shared
		if s.pending { // a lobby subscriber sees only itself
			users = &confinfo.Users{}
			for _, u := range changes {
				if u.Entity == s.entity {
					users.Users = append(users.Users, u)
				}
			}
			if len(users.Users) == 0 {
				continue
			}
		}
		s.push(notifyJob{doc: &confinfo.Info{Entity: f.uri, State: confinfo.Partial, ConfState: state, Users: users}, state: "active"})
	}
}

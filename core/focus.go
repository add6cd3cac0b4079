package core

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"golang.org/x/time/rate"

	"portcullis/access"
	"portcullis/core/confinfo"
	"portcullis/core/store"
	"portcullis/internal/sipnode"
)

// The Focus (RFC 4353, 4579; [MS-CONFBAS]): one instance per active
// meeting, a SIP UA at the conference URI. It admits joiners (INVITE),
// keeps the roster, takes C3P commands (INFO), serves the conference event
// package (SUBSCRIBE/NOTIFY, RFC 4575), and relays group IM (the IM MCU,
// im.go). Instances are made from the store on first use and dropped when
// nobody is left.

// anonymousDomain is the From domain anonymous joiners use; they prove
// the conference key with digest (password = key).
const anonymousDomain = "anonymous.invalid"

// focusManager finds the Focus of a request's conference URI.
type focusManager struct {
	*authenticator
	node  *sipnode.Node
	log   *slog.Logger
	csf   *serverFactory
	mcus  map[string]*IMMCU // the IM MCUs in this process, by ID
	mu    sync.Mutex
	confs map[string]*focus
	// ctx ends (stop) when the core closes: notifiers stop, sends in
	// flight are abandoned.
	ctx       context.Context
	stop      context.CancelFunc
	notifiers sync.WaitGroup
	closing   bool // under mu: no notifier starts (close is waiting)
}

// close stops the notifiers of every subscription and waits for them; a
// subscription answered meanwhile starts none.
func (fm *focusManager) close() {
	fm.mu.Lock()
	fm.closing = true
	fm.mu.Unlock()
	fm.stop()
	fm.notifiers.Wait()
}

// startNotifier runs f's notifier for s unless the manager is closing.
func (fm *focusManager) startNotifier(f *focus, s *subscription) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	if fm.closing {
		return
	}
	fm.notifiers.Add(1)
	go func() {
		defer fm.notifiers.Done()
		f.notifier(s)
	}()
}

// home reports whether a domain is one of the core's.
func (fm *focusManager) home(domain string) bool {
	_, ok := fm.digest.Realms()[strings.ToLower(domain)]
	return ok
}

// meetingOf returns the meeting ID a request is for, or false when the
// Request-URI is not a conference URI.
func meetingOf(req *sip.Request) (string, bool) {
	// Read from the parsed URI parameters: this runs for every request the
	// core gets.
	opaque, ok := req.Recipient.UriParams.Get("opaque")
	if !ok {
		return "", false
	}
	id, ok := strings.CutPrefix(opaque, "app:conf:focus:id:")
	return id, ok && meetingIDRE.MatchString(id)
}

// get returns the running Focus of a meeting, making it from the store.
func (fm *focusManager) get(ctx context.Context, id string) (*focus, error) {
	fm.mu.Lock()
	f := fm.confs[id]
	fm.mu.Unlock()
	if f != nil {
		return f, nil
	}
	// Read the store without the lock: other meetings' requests go on.
	m, err := fm.st.Meeting(ctx, id)
	if err != nil {
		return nil, err
	}
	if !m.Expires.IsZero() && time.Now().After(m.Expires) {
		return nil, store.ErrNoMeeting
	}
	users, err := fm.st.MeetingUsers(ctx, id)
	if err != nil {
		return nil, err
	}
	fm.mu.Lock()
	defer fm.mu.Unlock()
	if f := fm.confs[id]; f != nil {
		return f, nil // made meanwhile by another request
	}
	f = &focus{fm: fm, meeting: m, uri: ConferenceURI(m.Organizer, m.ID), id: m.ID, organizer: m.Organizer, durable: map[string]store.MeetingUser{},
		parts: map[string]*participant{}, byCall: map[string]*participant{}, subs: map[string]*subscription{}}
	for _, u := range users {
		f.durable[u.User] = u
	}
	f.mcu = fm.provision(id, "")
	fm.confs[id] = f
	fm.log.Info("focus started", "conference", f.uri)
	return f, nil
}

// maxParticipants is the configured bound on a meeting's participants (0:
// none, outside a running core).
func (fm *focusManager) maxParticipants() int {
	if fm.csf == nil {
		return 0
	}
	return fm.csf.cfg().MaxParticipants
}

// provision asks the Conferencing Server Factory for an IM MCU for a
// meeting (nil when none is live).
func (fm *focusManager) provision(meeting, except string) *IMMCU {
	if fm.csf == nil {
		return nil
	}
	// Group IM is relayed in the participants' dialogs, which this core
	// holds: only the IM MCUs in its process can carry it.
	id, err := fm.csf.pick(MediaChat, except, func(id string) bool { return fm.mcus[id] != nil })
	if err != nil {
		fm.log.Warn("no IM MCU for a meeting", "meeting", meeting, "error", err)
		return nil
	}
	m := fm.mcus[id]
	m.host(meeting)
	return m
}

// mcuLost moves the meetings of an MCU that stopped reporting to another
// one, or ends their chat; either way the participants are notified in the
// roster (new media IDs, or no chat medium).
func (fm *focusManager) mcuLost(id string) {
	fm.mu.Lock()
	var affected []*focus
	for _, f := range fm.confs {
		f.mu.Lock()
		if f.mcu != nil && f.mcu.id == id {
			affected = append(affected, f)
		}
		f.mu.Unlock()
	}
	fm.mu.Unlock()
	for _, f := range affected {
		next := fm.provision(f.id, id)
		f.mu.Lock()
		f.mcu = next
		var entities []string
		for e, p := range f.parts {
			p.chat = next != nil
			p.chatMediaID = "chat-" + randomString(8, idAlphabet)
			entities = append(entities, e)
		}
		f.mu.Unlock()
		if next != nil {
			fm.log.Info("meeting moved to another IM MCU", "conference", f.uri, "from", id, "to", next.id)
		} else {
			fm.log.Warn("meeting's chat ended: no IM MCU left", "conference", f.uri, "mcu", id)
		}
		f.changed(entities, nil)
	}
}

// drop forgets a Focus with nobody in it.
func (fm *focusManager) drop(f *focus) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	if fm.confs[f.id] == f {
		delete(fm.confs, f.id)
		f.mu.Lock()
		if f.mcu != nil {
			f.mcu.release(f.id)
		}
		f.mu.Unlock()
		fm.log.Info("focus stopped", "conference", f.uri)
	}
}

// ended ends a deleted meeting: every participant gets a final NOTIFY and
// a BYE.
func (fm *focusManager) ended(id string) {
	fm.mu.Lock()
	f := fm.confs[id]
	delete(fm.confs, id)
	fm.mu.Unlock()
	if f != nil {
		go f.end()
	}
}

// serve handles a request whose Request-URI is a conference URI.
func (fm *focusManager) serve(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	id, _ := meetingOf(req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if req.IsAck() {
		return
	}
	f, err := fm.get(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNoMeeting) {
			fm.refuse(tx, req, 404, "Not Found (no such conference)", "no_conference")
			return
		}
		fm.log.Error("store error", "error", err)
		fm.respond(tx, req, 500, "Server Internal Error")
		return
	}
	switch req.Method {
	case sip.INVITE:
		if p := f.participantOf(req); p != nil {
			fm.respond(tx, req, 200, "OK") // a re-INVITE: nothing changes
			return
		}
		f.join(ctx, peer, req, tx)
	case sip.BYE:
		f.leave(req, tx)
	case sip.SUBSCRIBE:
		f.subscribe(ctx, peer, req, tx)
	case sip.INFO:
		f.info(ctx, req, tx)
	case sip.MESSAGE:
		f.message(req, tx)
	case sip.OPTIONS:
		fm.respond(tx, req, 200, "OK", sip.NewHeader("Allow", "INVITE, ACK, BYE, SUBSCRIBE, INFO, MESSAGE, OPTIONS"))
	default:
		fm.respond(tx, req, 405, "Method Not Allowed", sip.NewHeader("Allow", "INVITE, ACK, BYE, SUBSCRIBE, INFO, MESSAGE, OPTIONS"))
	}
}

// focus is one active meeting: the meeting's settings, its participants
// and its subscriptions. Its lock guards all three; nothing is sent while
// holding it (sends go out from goroutines with snapshots).
type focus struct {
	fm        *focusManager
	uri       string
	id        string // the meeting's, never changes
	organizer string // likewise
	mu        sync.Mutex
	meeting   store.Meeting
	durable   map[string]store.MeetingUser // roles given and lobby decisions
	mcu       *IMMCU                       // the meeting's IM MCU (nil: none live)
	parts     map[string]*participant      // by entity
	byCall    map[string]*participant      // by the INVITE dialog's Call-ID
	subs      map[string]*subscription     // by Call-ID
}

// participant is one joiner.
type participant struct {
	entity      string
	display     string
	role        string
	status      string // confinfo.Connected, or confinfo.Pending in the lobby
	anonymous   bool
	federated   bool
	joinedVia   string // internal | remote | federated | anonymous
	dlg         *uasDialog
	chat        bool // in the IM MCU
	chatMediaID string
	im          *rate.Limiter // the participant's group IM (imRate)
}

// imRate and imBurst bound a participant's group IM: each message is sent
// to every other participant (up to max_participants), from a goroutine of
// its own, so one sender must not be able to flood the meeting or the core.
// People do not type faster; more gets 503 with Retry-After.
const (
	imRate  = 5
	imBurst = 20
)

// dropSubsOf ends p's subscriptions (under f.mu).
func (f *focus) dropSubsOf(p *participant) {
	for id, sub := range f.subs {
		if sub.part == p {
			delete(f.subs, id)
			sub.finish()
		}
	}
}

// participantOf is the participant whose join dialog req is in (Call-ID
// and both tags), or nil.
func (f *focus) participantOf(req *sip.Request) *participant {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.byCall[req.CallID().Value()]
	if p == nil {
		return nil
	}
	if tag, _ := req.From().Params.Get("tag"); tag != p.dlg.remoteTag {
		return nil
	}
	// Our tag: what only the participant learnt (in the join's 200), where
	// the Call-ID and their own tag are of their choosing.
	if tag, _ := req.To().Params.Get("tag"); tag != p.dlg.localTag {
		return nil
	}
	return p
}

// joiner is who an INVITE is from, once admitted by policy.
type joiner struct {
	entity, display, via string
	anonymous, federated bool
}

// viaPeer says whether a request came from an MTLS peer (an edge), not
// straight from a user's client on the users listener.
func viaPeer(peer *access.PeerIdentity) bool { return peer != nil && peer.Name != "" }

// identify authenticates the joiner of req against the meeting's policy,
// or answers the request and returns false.
func (f *focus) identify(ctx context.Context, peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) (joiner, bool) {
	fm := f.fm
	f.mu.Lock()
	m := f.meeting
	f.mu.Unlock()
	from := req.From()
	j := joiner{display: from.DisplayName}
	fromDomain := strings.ToLower(from.Address.Host)
	viaEdge := viaPeer(peer)
	if viaEdge {
		if h := req.GetHeader(access.TrustHeader); h != nil {
			if partner, ok := access.Federated(h.Value()); ok {
				if m.Admission == AdmitClosed {
					fm.refuse(tx, req, 403, "Forbidden (this meeting admits only users of the organiser's organisation)", "conf_federated_closed")
					return j, false
				}
				aor, _, domain, err := ParseAOR("sip:" + from.Address.User + "@" + from.Address.Host)
				if err != nil || domain != partner {
					fm.refuse(tx, req, 403, "Forbidden (sender is not of the partner's domain)", "federated_spoof")
					return j, false
				}
				j.entity, j.federated, j.via = aor, true, "federated"
				return j, true
			}
		}
	}
	if fromDomain == anonymousDomain {
		if m.Admission != AdmitAnonymous {
			fm.refuse(tx, req, 403, "Forbidden (this meeting does not admit anonymous users)", "conf_anonymous_closed")
			return j, false
		}
		_, _, orgDomain, _ := ParseAOR(m.Organizer)
		// [MS-SIPAE]: the conference key is the password.
		if !fm.authenticateWith(tx, req, orgDomain, true, func(username, realm, alg string) (string, error) {
			return access.HA1(alg, username, realm, m.Key), nil
		}) {
			return j, false
		}
		j.entity, j.anonymous, j.via = "sip:"+from.Address.User+"@"+anonymousDomain, true, "anonymous"
		if j.display == "" {
			j.display = "Guest"
		}
		return j, true
	}
	aor, _, domain, err := ParseAOR("sip:" + from.Address.User + "@" + from.Address.Host)
	if _, home := fm.digest.Realms()[domain]; err != nil || !home {
		fm.refuse(tx, req, 403, "Forbidden (sender is not a user of a home domain)", "foreign_sender")
		return j, false
	}
	user, ok := fm.authenticate(ctx, tx, req, domain, true)
	if !ok {
		return j, false
	}
	if user.AOR != aor {
		fm.refuse(tx, req, 403, "Forbidden (From is not the authenticated user)", "from_mismatch")
		return j, false
	}
	j.entity, j.via = aor, "internal"
	if viaEdge {
		j.via = "remote"
	}
	return j, true
}

// join admits an INVITE (RFC 4579 §5.2): authenticated and allowed by the
// meeting's admission; locked meetings refuse all but the organiser and
// presenters; with a lobby, attendees wait until a presenter admits them.
func (f *focus) join(ctx context.Context, peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	j, ok := f.identify(ctx, peer, req, tx)
	if !ok {
		return
	}
	fm := f.fm
	f.mu.Lock()
	m := f.meeting
	role := RoleAttendee
	d := f.durable[j.entity]
	switch {
	case j.entity == m.Organizer:
		role = RoleOrganizer
	case d.Role != "" && !j.anonymous:
		role = d.Role
	}
	presenter := role == RoleOrganizer || role == RolePresenter
	if m.Locked && !presenter {
		f.mu.Unlock()
		fm.refuse(tx, req, 403, "Forbidden (the conference is locked)", "conf_locked")
		return
	}
	if d.Access == "denied" && !presenter {
		f.mu.Unlock()
		fm.refuse(tx, req, 403, "Forbidden (denied entry by a presenter)", "conf_denied")
		return
	}
	old := f.parts[j.entity] // a participant joining again
	if j.anonymous && old != nil {
		// Every guest holds the same key, so a second join under a guest's
		// name is not proof of being them: it would replace them in their
		// place and name. (A guest that comes back picks a new name.)
		f.mu.Unlock()
		fm.refuse(tx, req, 403, "Forbidden (a guest of that name is in the conference)", "conf_guest_name_taken")
		return
	}
	if limit := fm.maxParticipants(); limit > 0 && old == nil && len(f.parts) >= limit && !presenter {
		// Full: no more attendees (the organiser and presenters still get
		// in, to run the meeting); a participant joining again replaces
		// themself.
		f.mu.Unlock()
		fm.refuse(tx, req, 486, "Busy Here (the conference is full)", "conf_full")
		return
	}
	status := confinfo.Connected
	if m.Lobby && !presenter && d.Access != "admitted" {
		status = confinfo.Pending
	}
	if old != nil {
		// A second join replaces the first (a client re-joining): the old
		// dialog and its subscriptions go.
		delete(f.byCall, old.dlg.callID)
		f.dropSubsOf(old)
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	tag, _ := res.To().Params.Get("tag")
	if tag == "" {
		tag = sip.GenerateTagN(16)
		res.To().Params.Add("tag", tag)
	}
	p := &participant{entity: j.entity, display: j.display, role: role, status: status, anonymous: j.anonymous, federated: j.federated,
		joinedVia: j.via, dlg: newUASDialog(req, tag, f.fm.node.Flow(req.Source()), viaPeer(peer)), chat: true, chatMediaID: "chat-" + randomString(8, idAlphabet),
		im: rate.NewLimiter(imRate, imBurst)}
	f.parts[j.entity] = p
	f.byCall[p.dlg.callID] = p
	f.mu.Unlock()

	res.AppendHeader(&sip.ContactHeader{Address: confURI(f.uri)})
	res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, BYE, SUBSCRIBE, INFO, MESSAGE, OPTIONS"))
	if err := tx.Respond(res); err != nil {
		fm.log.Warn("answering a join failed", "error", err)
	}
	fm.log.Info("joined", "conference", f.uri, "user", j.entity, "role", role, "status", status, "via", j.via)
	f.changed([]string{j.entity}, nil)
}

func confURI(s string) sip.Uri {
	var u sip.Uri
	_ = sip.ParseUri(s, &u)
	return u
}

// leave is a participant's BYE.
func (f *focus) leave(req *sip.Request, tx sip.ServerTransaction) {
	p := f.participantOf(req)
	f.mu.Lock()
	if p != nil {
		delete(f.byCall, p.dlg.callID)
		if f.parts[p.entity] == p {
			delete(f.parts, p.entity)
		}
	}
	f.mu.Unlock()
	if p == nil {
		f.fm.respond(tx, req, 481, "Call/Transaction Does Not Exist")
		return
	}
	f.fm.respond(tx, req, 200, "OK")
	f.fm.log.Info("left", "conference", f.uri, "user", p.entity)
	f.changed(nil, []string{p.entity})
	f.dropIfEmpty()
}

// dropIfEmpty stops the Focus when no participant or subscription is left.
func (f *focus) dropIfEmpty() {
	f.mu.Lock()
	empty := len(f.parts) == 0 && len(f.subs) == 0
	f.mu.Unlock()
	if empty {
		f.fm.drop(f)
	}
}

// eject removes a participant: a final NOTIFY on their subscriptions and a
// BYE on their dialog.
func (f *focus) eject(entity string) bool {
	f.mu.Lock()
	p := f.parts[entity]
	var mySubs []*subscription
	if p != nil {
		delete(f.parts, entity)
		delete(f.byCall, p.dlg.callID)
		for id, s := range f.subs {
			if s.entity == entity {
				mySubs = append(mySubs, s)
				delete(f.subs, id)
			}
		}
	}
	f.mu.Unlock()
	if p == nil {
		return false
	}
	f.changed(nil, []string{entity})
	go func() {
		ctx, cancel := context.WithTimeout(f.fm.ctx, 10*time.Second)
		defer cancel()
		for _, s := range mySubs {
			s.push(notifyJob{doc: f.deletedDoc(s), state: "terminated;reason=deactivated"})
			s.finish()
		}
		if _, err := p.dlg.send(ctx, f.fm.node, p.dlg.request(sip.BYE)); err != nil {
			f.fm.log.Info("BYE to an ejected participant failed", "user", entity, "error", err)
		}
	}()
	return true
}

// end ends the meeting for everyone (deleted).
func (f *focus) end() {
	f.mu.Lock()
	var entities []string
	for e := range f.parts {
		entities = append(entities, e)
	}
	f.mu.Unlock()
	for _, e := range entities {
		f.eject(e)
	}
}

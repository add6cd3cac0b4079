package core

import (
	"context"
	"slices"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/core/c3p"
	"portcullis/core/confinfo"
	"portcullis/core/store"
)

// C3P commands to a Focus come in SIP INFO in the sender's join dialog.
// The answer (200 OK) carries the C3P response; addEndpointMedia is
// answered pending, and the final response follows in an INFO once the IM
// MCU has the participant.

// info runs one C3P command.
func (f *focus) info(ctx context.Context, req *sip.Request, tx sip.ServerTransaction) {
	fm := f.fm
	p := f.participantOf(req)
	if p == nil {
		fm.refuse(tx, req, 403, "Forbidden (C3P commands come in the sender's conference dialog)", "c3p_not_participant")
		return
	}
	if ct := req.ContentType(); ct == nil || !c3p.IsC3P(ct.Value()) {
		fm.refuse(tx, req, 415, "Unsupported Media Type", "c3p_content_type", sip.NewHeader("Accept", c3p.ContentType))
		return
	}
	r, err := c3p.Parse(req.Body())
	if err != nil {
		fm.log.Info("malformed C3P", "conference", f.uri, "from", p.entity, "error", err)
		fm.refuse(tx, req, 400, "Bad Request (malformed C3P)", "c3p_malformed")
		return
	}
	res, after := f.command(ctx, p, r)
	fm.log.Info("c3p", "conference", f.uri, "command", r.Command.Name(), "from", p.entity, "code", res.Code, "reason", res.Reason)
	ok := sip.NewResponseFromRequest(req, 200, "OK", c3p.Marshal(res))
	ok.AppendHeader(sip.NewHeader("Content-Type", c3p.ContentType))
	if err := tx.Respond(ok); err != nil {
		fm.log.Warn("answering INFO failed", "error", err)
	}
	if after != nil {
		go after()
	}
}

// presenterOnly lists the commands only the organiser and presenters may
// give (deleteUser of oneself and media of oneself are anyone's).
var presenterOnly = []string{"modifyConferenceLock", "modifyUserRoles", "setUserAccess", "modifyConference", "addUser", "deleteUser", "modifyUser"}

// command decides and applies one command; after, if set, runs once the
// response is sent.
func (f *focus) command(ctx context.Context, p *participant, r *c3p.Request) (*c3p.Response, func()) {
	cmd := r.Command
	name := cmd.Name()
	if !c3p.Known(name) {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonNotSupported, "unknown command "+name), nil
	}
	if cmd.Keys != nil && cmd.Keys.ConfEntity != "" {
		if id, ok := MeetingID(cmd.Keys.ConfEntity); !ok || id != f.id {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonNoConference, "confEntity names another conference"), nil
		}
	}
	f.mu.Lock()
	role := p.role // a presenter's command may change it meanwhile (setRole)
	f.mu.Unlock()
	presenter := role == RoleOrganizer || role == RolePresenter
	self := cmd.User != nil && cmd.User.Entity == p.entity
	if slices.Contains(presenterOnly, name) && !presenter && !(name == "deleteUser" && self) {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "only the organiser and presenters may "+name), nil
	}
	switch name {
	case "ping":
		return c3p.Reply(r, c3p.Success, "", ""), nil
	case "getConference":
		res := c3p.Reply(r, c3p.Success, "", "")
		f.mu.Lock()
		c := conferenceOf(f.meeting)
		if !presenter {
			c.Key = "" // the key is for those who run the meeting
		}
		for _, q := range f.parts {
			if q.status == confinfo.Connected {
				c.Users = append(c.Users, c3p.User{Entity: q.entity, DisplayName: q.display, Roles: []string{q.role}})
			}
		}
		f.mu.Unlock()
		slices.SortFunc(c.Users, func(a, b c3p.User) int {
			if a.Entity < b.Entity {
				return -1
			}
			return 1
		})
		res.Result.Conferences = []c3p.Conference{c}
		return res, nil
	case "modifyConferenceLock":
		if cmd.Locked == nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "locked is required"), nil
		}
		if err := f.update(ctx, func(m *store.Meeting) { m.Locked = *cmd.Locked }); err != nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error"), nil
		}
		f.changed(nil, nil)
		return c3p.Reply(r, c3p.Success, "", ""), nil
	case "modifyConference":
		if role != RoleOrganizer {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "only the organiser changes the meeting's settings"), nil
		}
		exp, err := ParseExpiry(cmd.Expires)
		if err != nil || (cmd.Admission != "" && cmd.Admission != AdmitClosed && cmd.Admission != AdmitOpen && cmd.Admission != AdmitAnonymous) {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "admission must be closed, open or anonymous; expires a date or RFC 3339"), nil
		}
		if err := f.update(ctx, func(m *store.Meeting) {
			if cmd.Subject != "" {
				m.Subject = cmd.Subject
			}
			if cmd.Admission != "" {
				m.Admission = cmd.Admission
			}
			if cmd.Lobby != nil {
				m.Lobby = *cmd.Lobby
			}
			if !exp.IsZero() {
				m.Expires = exp
			}
		}); err != nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error"), nil
		}
		f.changed(nil, nil)
		return c3p.Reply(r, c3p.Success, "", ""), nil
	case "deleteConference":
		if role != RoleOrganizer {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "only the organiser deletes the meeting"), nil
		}
		if err := f.fm.st.DeleteMeeting(ctx, f.id); err != nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error"), nil
		}
		return c3p.Reply(r, c3p.Success, "", ""), func() { f.fm.ended(f.id) }
	case "deleteUser":
		if cmd.User == nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "user is required"), nil
		}
		if !f.eject(cmd.User.Entity) {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonNoUser, cmd.User.Entity+" is not in the conference"), nil
		}
		f.fm.log.Info("ejected", "conference", f.uri, "user", cmd.User.Entity, "by", p.entity)
		f.dropIfEmpty()
		return c3p.Reply(r, c3p.Success, "", ""), nil
	case "modifyUserRoles", "modifyUser", "addUser":
		if cmd.User == nil || cmd.User.Entity == "" || len(cmd.User.Roles) != 1 {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "user with one role is required"), nil
		}
		role := cmd.User.Roles[0]
		if role != RolePresenter && role != RoleAttendee {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "role must be presenter or attendee"), nil
		}
		return f.setRole(ctx, r, cmd.User.Entity, role, name == "addUser")
	case "setUserAccess":
		if cmd.User == nil || (cmd.Access != "admit" && cmd.Access != "deny") {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "user and access admit or deny are required"), nil
		}
		return f.setAccess(ctx, r, cmd.User.Entity, cmd.Access == "admit")
	case "addEndpointMedia", "deleteEndpointMedia":
		if cmd.User != nil && !self && !presenter {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "media of another participant"), nil
		}
		target := p.entity
		if cmd.User != nil {
			target = cmd.User.Entity
		}
		if cmd.Media != nil && cmd.Media.Type != "" && cmd.Media.Type != "chat" && cmd.Media.Type != "message" {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonNotSupported, "this conference has the chat (IM) medium only"), nil
		}
		return f.setChat(r, p, target, name == "addEndpointMedia")
	case "addConference", "getConferences":
		return c3p.Reply(r, c3p.Failure, c3p.ReasonNotSupported, name+" goes to the Focus Factory"), nil
	}
	return c3p.Reply(r, c3p.Failure, c3p.ReasonNotSupported, name+" is not supported by this Focus"), nil
}

// update changes the meeting's settings, in the store first.
func (f *focus) update(ctx context.Context, change func(*store.Meeting)) error {
	f.mu.Lock()
	m := f.meeting
	f.mu.Unlock()
	change(&m)
	if err := f.fm.st.UpdateMeeting(ctx, m); err != nil {
		return err
	}
	f.mu.Lock()
	f.meeting = m
	f.mu.Unlock()
	return nil
}

// setRole gives a user a role (kept in the store: it survives a restart
// and applies when they join later).
func (f *focus) setRole(ctx context.Context, r *c3p.Request, entity, role string, adding bool) (*c3p.Response, func()) {
	f.mu.Lock()
	p := f.parts[entity]
	d := f.durable[entity]
	f.mu.Unlock()
	if entity == f.organizer {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, "the organiser's role does not change"), nil
	}
	if p == nil && !adding && d.User == "" {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonNoUser, entity+" is not in the conference"), nil
	}
	if p != nil && p.anonymous && role == RolePresenter {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "anonymous participants cannot present"), nil
	}
	d.User, d.Role = entity, role
	if err := f.fm.st.SetMeetingUser(ctx, f.id, d); err != nil {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error"), nil
	}
	f.mu.Lock()
	f.durable[entity] = d
	if p != nil {
		p.role = role
	}
	f.mu.Unlock()
	if p != nil {
		f.changed([]string{entity}, nil)
	}
	return c3p.Reply(r, c3p.Success, "", ""), nil
}

// setAccess admits a user from the lobby or denies them (a BYE).
func (f *focus) setAccess(ctx context.Context, r *c3p.Request, entity string, admit bool) (*c3p.Response, func()) {
	f.mu.Lock()
	p := f.parts[entity]
	d := f.durable[entity]
	waiting := p != nil && p.status == confinfo.Pending
	f.mu.Unlock()
	if !waiting {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonNoUser, entity+" is not waiting in the lobby"), nil
	}
	d.User, d.Access = entity, "denied"
	if admit {
		d.Access = "admitted"
	}
	if err := f.fm.st.SetMeetingUser(ctx, f.id, d); err != nil {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error"), nil
	}
	f.mu.Lock()
	f.durable[entity] = d
	if admit {
		p.status = confinfo.Connected
	}
	f.mu.Unlock()
	if admit {
		f.fm.log.Info("admitted from the lobby", "conference", f.uri, "user", entity)
		f.changed([]string{entity}, nil)
		return c3p.Reply(r, c3p.Success, "", ""), nil
	}
	f.fm.log.Info("denied entry", "conference", f.uri, "user", entity)
	f.eject(entity)
	return c3p.Reply(r, c3p.Success, "", ""), nil
}

// setChat puts a participant in or out of the IM MCU: pending now, the
// final response in an INFO to the requester when it is done.
func (f *focus) setChat(r *c3p.Request, requester *participant, entity string, on bool) (*c3p.Response, func()) {
	f.mu.Lock()
	p := f.parts[entity]
	f.mu.Unlock()
	if p == nil {
		return c3p.Reply(r, c3p.Failure, c3p.ReasonNoUser, entity+" is not in the conference"), nil
	}
	return c3p.Reply(r, c3p.Pending, "", ""), func() {
		f.mu.Lock()
		p.chat = on
		if on && p.chatMediaID == "" {
			p.chatMediaID = "chat-" + randomString(8, idAlphabet)
		}
		f.mu.Unlock()
		f.changed([]string{entity}, nil)
		final := c3p.Reply(r, c3p.Success, "", "")
		req := requester.dlg.request(sip.INFO)
		req.AppendHeader(sip.NewHeader("Content-Type", c3p.ContentType))
		req.SetBody(c3p.Marshal(final))
		ctx, cancel := context.WithTimeout(f.fm.ctx, 10*time.Second)
		defer cancel()
		if _, err := requester.dlg.send(ctx, f.fm.node, req); err != nil {
			f.fm.log.Info("final C3P response failed", "user", entity, "error", err)
		}
	}
}

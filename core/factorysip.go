package core

import (
	"context"
	"log/slog"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
	"portcullis/core/c3p"
)

// Roles in a meeting.
const (
	RoleOrganizer = "organizer"
	RolePresenter = "presenter"
	RoleAttendee  = "attendee"
)

// factoryService serves C3P in SIP SERVICE to the Focus Factory URI:
// addConference, getConferences, deleteConference, for the authenticated
// user (407 first).
type factoryService struct {
	*authenticator
	f   *Factory
	log *slog.Logger
}

// service dispatches SIP SERVICE by content type: C3P to the Focus Factory,
// media relay credentials to MRAS.
func service(f *factoryService, m *mras) func(*access.PeerIdentity, *sip.Request, sip.ServerTransaction) {
	return func(peer *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
		if ct := req.ContentType(); ct != nil && c3p.IsC3P(ct.Value()) {
			f.serve(req, tx)
			return
		}
		m.service(peer, req, tx)
	}
}

func (s *factoryService) serve(req *sip.Request, tx sip.ServerTransaction) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if v, _ := req.Recipient.UriParams.Get("opaque"); v != "app:conf:focusfactory" {
		s.refuse(tx, req, 404, "Not Found (not a Focus Factory URI)", "factory_uri")
		return
	}
	user, ok := s.homeSender(ctx, tx, req)
	if !ok {
		return
	}
	r, err := c3p.Parse(req.Body())
	if err != nil {
		s.log.Info("malformed C3P to the Focus Factory", "from", user.AOR, "error", err)
		s.refuse(tx, req, 400, "Bad Request (malformed C3P)", "c3p_malformed")
		return
	}
	res := s.f.c3pCommand(ctx, user.AOR, r)
	s.log.Info("focus factory", "command", r.Command.Name(), "user", user.AOR, "code", res.Code, "reason", res.Reason)
	ok200 := sip.NewResponseFromRequest(req, 200, "OK", c3p.Marshal(res))
	ok200.AppendHeader(sip.NewHeader("Content-Type", c3p.ContentType))
	if err := tx.Respond(ok200); err != nil {
		s.log.Warn("answering SERVICE failed", "error", err)
	}
}

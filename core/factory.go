package core

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strings"
	"sync"
	"time"

	"portcullis/core/c3p"
	"portcullis/core/store"
)

// The Focus Factory ([MS-CONFPRO], PROTOCOLS.md): it schedules meetings.
// Each gets a conference URI, sip:<organizer>;gruu;opaque=app:conf:focus:id:<ID>,
// and a numeric conference key for anonymous join. Meetings live in the
// store; the Focus of a meeting is created when someone joins.

// Admission levels, from the narrowest.
const (
	// AdmitClosed: the organiser and users of the home domains (internal
	// and remote): "people from my company".
	AdmitClosed = "closed"
	// AdmitOpen: and federated users.
	AdmitOpen = "open"
	// AdmitAnonymous: and anonymous users who give the conference key.
	AdmitAnonymous = "anonymous"
)

// Factory errors.
var (
	ErrBadMeeting = errors.New("invalid meeting")
	ErrNotOwner   = errors.New("not the meeting's organiser")
)

// MeetingOptions are what an organiser asks for.
type MeetingOptions struct {
	Organizer string
	Subject   string
	Admission string // default closed
	Lobby     bool
	Expires   time.Time // zero: never
}

// Factory creates, lists and deletes meetings.
type Factory struct {
	st *store.Store
	// ended is called after a meeting is deleted (the Focus ends it if it
	// is running); nil outside a running core.
	ended func(id string)
	// maxPerOrganizer bounds users' addConference (nil: no bound); users
	// schedule one at a time (mu), so that requests together cannot pass
	// it.
	maxPerOrganizer func() int
	mu              sync.Mutex
}

// NewFactory makes a factory over a store (operator commands use it too).
func NewFactory(st *store.Store) *Factory { return &Factory{st: st} }

var meetingIDRE = regexp.MustCompile(`^[A-Za-z0-9]{8,32}$`)

// ConferenceURI is a meeting's conference URI.
func ConferenceURI(organizer, id string) string {
	return organizer + ";gruu;opaque=app:conf:focus:id:" + id
}

// FactoryURI is the Focus Factory's URI for an organiser.
func FactoryURI(organizer string) string { return organizer + ";gruu;opaque=app:conf:focusfactory" }

// MeetingID returns the meeting ID in a conference URI (or an ID given
// alone), or false.
func MeetingID(s string) (string, bool) {
	s = strings.Trim(strings.TrimSpace(s), "<>")
	if meetingIDRE.MatchString(s) {
		return s, true
	}
	_, id, ok := strings.Cut(s, "opaque=app:conf:focus:id:")
	if !ok {
		return "", false
	}
	if i := strings.IndexAny(id, ";>? "); i >= 0 {
		id = id[:i]
	}
	return id, meetingIDRE.MatchString(id)
}

// ParseExpiry reads an expiry: a date (end of that day, UTC) or RFC 3339.
func ParseExpiry(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: expiry %q is neither a date (2026-12-31) nor RFC 3339", ErrBadMeeting, s)
	}
	return t.Add(24*time.Hour - time.Second), nil
}

// Create schedules a meeting for an existing, enabled user.
func (f *Factory) Create(ctx context.Context, o MeetingOptions) (store.Meeting, error) {
	org, _, _, err := ParseAOR(o.Organizer)
	if err != nil {
		return store.Meeting{}, fmt.Errorf("%w: organizer: %v", ErrBadMeeting, err)
	}
	if u, err := f.st.UserByAOR(ctx, org); err != nil || u.Disabled {
		return store.Meeting{}, fmt.Errorf("%w: organizer %s is not an enabled user", ErrBadMeeting, org)
	}
	if o.Admission == "" {
		o.Admission = AdmitClosed
	}
	if o.Admission != AdmitClosed && o.Admission != AdmitOpen && o.Admission != AdmitAnonymous {
		return store.Meeting{}, fmt.Errorf("%w: admission must be closed, open or anonymous, got %q", ErrBadMeeting, o.Admission)
	}
	if !o.Expires.IsZero() && !o.Expires.After(time.Now()) {
		return store.Meeting{}, fmt.Errorf("%w: expiry %s is in the past", ErrBadMeeting, o.Expires.Format(time.RFC3339))
	}
	if len(o.Subject) > 256 {
		return store.Meeting{}, fmt.Errorf("%w: subject longer than 256 characters", ErrBadMeeting)
	}
	m := store.Meeting{Organizer: org, Subject: o.Subject, Admission: o.Admission, Lobby: o.Lobby, Expires: o.Expires}
	for range 5 {
		m.ID, m.Key = randomString(16, idAlphabet), randomString(8, "0123456789")
		if err = f.st.CreateMeeting(ctx, m); !errors.Is(err, store.ErrKeyTaken) {
			break
		}
	}
	if err != nil {
		return store.Meeting{}, err
	}
	if err := f.st.SetMeetingUser(ctx, m.ID, store.MeetingUser{User: org, Role: RoleOrganizer, Access: "admitted"}); err != nil {
		return store.Meeting{}, err
	}
	return f.st.Meeting(ctx, m.ID)
}

// List returns an organiser's meetings ("" for all).
func (f *Factory) List(ctx context.Context, organizer string) ([]store.Meeting, error) {
	return f.st.Meetings(ctx, organizer)
}

// Delete removes a meeting; by, if set, must be its organiser. A running
// meeting ends.
func (f *Factory) Delete(ctx context.Context, id, by string) error {
	m, err := f.st.Meeting(ctx, id)
	if err != nil {
		return err
	}
	if by != "" && by != m.Organizer {
		return ErrNotOwner
	}
	if err := f.st.DeleteMeeting(ctx, id); err != nil {
		return err
	}
	if f.ended != nil {
		f.ended(id)
	}
	return nil
}

const idAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	max := big.NewInt(int64(len(alphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic(err) // crypto/rand does not fail on Linux
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b)
}

// conferenceOf describes a meeting in C3P.
func conferenceOf(m store.Meeting) c3p.Conference {
	c := c3p.Conference{Entity: ConferenceURI(m.Organizer, m.ID), Key: m.Key, Organizer: m.Organizer, Subject: m.Subject,
		Admission: m.Admission, Lobby: m.Lobby, Locked: m.Locked}
	if !m.Expires.IsZero() {
		c.Expires = m.Expires.UTC().Format(time.RFC3339)
	}
	return c
}

// c3pCommand runs a Focus Factory command for user (authenticated) and
// returns the C3P response.
func (f *Factory) c3pCommand(ctx context.Context, user string, r *c3p.Request) *c3p.Response {
	cmd := r.Command
	switch cmd.Name() {
	case "addConference":
		if cmd.Organizer != "" && cmd.Organizer != user {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "meetings are created for oneself")
		}
		exp, err := ParseExpiry(cmd.Expires)
		if err != nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonBadArgument, err.Error())
		}
		lobby := cmd.Lobby != nil && *cmd.Lobby
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.maxPerOrganizer != nil {
			n, err := f.st.CountMeetings(ctx, user)
			if err != nil {
				return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error")
			}
			if limit := f.maxPerOrganizer(); n >= limit {
				return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, fmt.Sprintf("an organiser may have %d meetings; delete one first", limit))
			}
		}
		m, err := f.Create(ctx, MeetingOptions{Organizer: user, Subject: cmd.Subject, Admission: cmd.Admission, Lobby: lobby, Expires: exp})
		if err != nil {
			reason := c3p.ReasonInternal
			if errors.Is(err, ErrBadMeeting) {
				reason = c3p.ReasonBadArgument
			}
			return c3p.Reply(r, c3p.Failure, reason, err.Error())
		}
		res := c3p.Reply(r, c3p.Success, "", "")
		res.Result.Keys = &c3p.Keys{ConfEntity: ConferenceURI(m.Organizer, m.ID), ConferenceKey: m.Key}
		return res
	case "getConferences":
		ms, err := f.List(ctx, user)
		if err != nil {
			return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error")
		}
		res := c3p.Reply(r, c3p.Success, "", "")
		for _, m := range ms {
			res.Result.Conferences = append(res.Result.Conferences, conferenceOf(m))
		}
		return res
	case "deleteConference":
		id := ""
		if cmd.Keys != nil {
			id, _ = MeetingID(cmd.Keys.ConfEntity)
		}
		switch err := f.Delete(ctx, id, user); {
		case err == nil:
			return c3p.Reply(r, c3p.Success, "", "")
		case errors.Is(err, store.ErrNoMeeting) || id == "":
			return c3p.Reply(r, c3p.Failure, c3p.ReasonNoConference, "no such meeting")
		case errors.Is(err, ErrNotOwner):
			return c3p.Reply(r, c3p.Failure, c3p.ReasonForbidden, "only the organiser deletes a meeting")
		default:
			return c3p.Reply(r, c3p.Failure, c3p.ReasonInternal, "store error")
		}
	case "ping":
		return c3p.Reply(r, c3p.Success, "", "")
	}
	return c3p.Reply(r, c3p.Failure, c3p.ReasonNotSupported, "the Focus Factory takes addConference, getConferences, deleteConference and ping")
}

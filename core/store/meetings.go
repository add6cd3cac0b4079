package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrNoMeeting is returned for a meeting not in the store.
var ErrNoMeeting = errors.New("no such meeting")

// ErrKeyTaken is returned when a new meeting's conference key is in use.
var ErrKeyTaken = errors.New("conference key in use")

// Meeting is a scheduled conference.
type Meeting struct {
	ID        string
	Organizer string // sip:alice@example.test
	Subject   string
	Admission string // open | closed | anonymous
	Lobby     bool
	Locked    bool
	Key       string    // numeric conference key (anonymous join)
	Expires   time.Time // zero: never
	Created   time.Time
}

// MeetingUser is a user's durable state in a meeting.
type MeetingUser struct {
	User   string // AOR, or an anonymous participant's URI
	Role   string // organizer | presenter | attendee ("": by policy)
	Access string // admitted | denied ("": not decided)
}

const meetingColumns = `id, organizer, subject, admission, lobby, locked, conf_key, expires_at, created_at`

func scanMeeting(row interface{ Scan(...any) error }) (Meeting, error) {
	var m Meeting
	var exp int64
	var created string
	err := row.Scan(&m.ID, &m.Organizer, &m.Subject, &m.Admission, &m.Lobby, &m.Locked, &m.Key, &exp, &created)
	if exp != 0 {
		m.Expires = time.Unix(exp, 0)
	}
	m.Created, _ = time.Parse(time.RFC3339, created)
	return m, err
}

// CreateMeeting stores a new meeting.
func (s *Store) CreateMeeting(ctx context.Context, m Meeting) error {
	var exp int64
	if !m.Expires.IsZero() {
		exp = m.Expires.Unix()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO meetings (`+meetingColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		m.ID, m.Organizer, m.Subject, m.Admission, m.Lobby, m.Locked, m.Key, exp, time.Now().UTC().Format(time.RFC3339))
	if err != nil && strings.Contains(err.Error(), "meetings.conf_key") {
		return ErrKeyTaken
	}
	return err
}

// Meeting reads one meeting.
func (s *Store) Meeting(ctx context.Context, id string) (Meeting, error) {
	m, err := scanMeeting(s.db.QueryRowContext(ctx, `SELECT `+meetingColumns+` FROM meetings WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Meeting{}, fmt.Errorf("%s: %w", id, ErrNoMeeting)
	}
	return m, err
}

// MeetingByKey finds a meeting by its conference key.
func (s *Store) MeetingByKey(ctx context.Context, key string) (Meeting, error) {
	m, err := scanMeeting(s.db.QueryRowContext(ctx, `SELECT `+meetingColumns+` FROM meetings WHERE conf_key = ?`, key))
	if errors.Is(err, sql.ErrNoRows) {
		return Meeting{}, ErrNoMeeting
	}
	return m, err
}

// Meetings lists an organiser's meetings ("" lists all), oldest first.
func (s *Store) Meetings(ctx context.Context, organizer string) ([]Meeting, error) {
	q, args := `SELECT `+meetingColumns+` FROM meetings ORDER BY created_at, id`, []any{}
	if organizer != "" {
		q, args = `SELECT `+meetingColumns+` FROM meetings WHERE organizer = ? ORDER BY created_at, id`, []any{organizer}
	}
	return queryAll(ctx, s.db, scanMeeting, q, args...)
}

// CountMeetings is how many meetings an organiser has.
func (s *Store) CountMeetings(ctx context.Context, organizer string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM meetings WHERE organizer = ?`, organizer).Scan(&n)
	return n, err
}

// UpdateMeeting writes a meeting's settings (subject, admission, lobby,
// lock, expiry).
func (s *Store) UpdateMeeting(ctx context.Context, m Meeting) error {
	var exp int64
	if !m.Expires.IsZero() {
		exp = m.Expires.Unix()
	}
	res, err := s.db.ExecContext(ctx, `UPDATE meetings SET subject = ?, admission = ?, lobby = ?, locked = ?, expires_at = ? WHERE id = ?`,
		m.Subject, m.Admission, m.Lobby, m.Locked, exp, m.ID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", m.ID, ErrNoMeeting)
	}
	return nil
}

// DeleteMeeting removes a meeting and its users' state.
func (s *Store) DeleteMeeting(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM meetings WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", id, ErrNoMeeting)
	}
	return nil
}

// SetMeetingUser records a user's role and lobby decision in a meeting.
func (s *Store) SetMeetingUser(ctx context.Context, id string, u MeetingUser) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO meeting_users (meeting_id, user, role, access) VALUES (?, ?, ?, ?)
		ON CONFLICT (meeting_id, user) DO UPDATE SET role = excluded.role, access = excluded.access`, id, u.User, u.Role, u.Access)
	return err
}

// MeetingUsers lists the users with durable state in a meeting.
func (s *Store) MeetingUsers(ctx context.Context, id string) ([]MeetingUser, error) {
	return queryAll(ctx, s.db, func(row interface{ Scan(...any) error }) (MeetingUser, error) {
		var u MeetingUser
		err := row.Scan(&u.User, &u.Role, &u.Access)
		return u, err
	}, `SELECT user, role, access FROM meeting_users WHERE meeting_id = ? ORDER BY user`, id)
}

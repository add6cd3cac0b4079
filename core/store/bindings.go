package store

import (
	"context"
	"time"
)

const bindingColumns = `aor, contact, call_id, cseq, expires_at, source, path`

// Binding is one registered contact of an address of record (RFC 3261 §10).
type Binding struct {
	AOR     string
	Contact string // the Contact URI as registered
	CallID  string
	CSeq    uint32
	Expires time.Time
	Source  string // where the REGISTER came from (transport address)
	Path    string // Path header values (RFC 3327), comma-separated; "" when direct
}

// PutBinding adds or refreshes a binding.
func (s *Store) PutBinding(ctx context.Context, b Binding) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO bindings (aor, contact, call_id, cseq, expires_at, source, path)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (aor, contact) DO UPDATE SET call_id = excluded.call_id, cseq = excluded.cseq,
			expires_at = excluded.expires_at, source = excluded.source, path = excluded.path`,
		b.AOR, b.Contact, b.CallID, b.CSeq, b.Expires.Unix(), b.Source, b.Path)
	s.cache.dropBindings(b.AOR)
	return err
}

// DeleteBinding removes one binding; DeleteBindings removes all of an AOR's.
func (s *Store) DeleteBinding(ctx context.Context, aor, contact string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM bindings WHERE aor = ? AND contact = ?`, aor, contact)
	s.cache.dropBindings(aor)
	return err
}

func (s *Store) DeleteBindings(ctx context.Context, aor string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM bindings WHERE aor = ?`, aor)
	s.cache.dropBindings(aor)
	return err
}

// Bindings lists an AOR's bindings that have not expired at now.
func (s *Store) Bindings(ctx context.Context, aor string, now time.Time) ([]Binding, error) {
	s.checkExternal(ctx)
	if bs, ok := s.cache.liveBindings(aor, now); ok {
		return bs, nil
	}
	gen := s.cache.generation()
	all, err := s.allBindings(ctx, aor)
	if err != nil {
		return nil, err
	}
	s.cache.putBindings(gen, aor, all)
	var out []Binding
	for _, b := range all {
		if b.Expires.After(now) {
			out = append(out, b)
		}
	}
	return out, nil
}

// allBindings reads every binding of an AOR, expired or not.
func (s *Store) allBindings(ctx context.Context, aor string) ([]Binding, error) {
	rows, err := s.bindings.QueryContext(ctx, aor)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Binding
	for rows.Next() {
		var b Binding
		var exp int64
		if err := rows.Scan(&b.AOR, &b.Contact, &b.CallID, &b.CSeq, &exp, &b.Source, &b.Path); err != nil {
			return nil, err
		}
		b.Expires = time.Unix(exp, 0)
		out = append(out, b)
	}
	return out, rows.Err()
}

// DeleteExpired removes bindings expired at now and returns how many.
func (s *Store) DeleteExpired(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM bindings WHERE expires_at <= ?`, now.Unix())
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if n > 0 {
		s.cache.dropBindings("")
	}
	return n, err
}

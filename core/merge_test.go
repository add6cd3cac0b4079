package core

import (
	"testing"

	"portcullis/core/confinfo"
)

func users(us ...confinfo.User) *confinfo.Users { return &confinfo.Users{Users: us} }

func TestMergeNotifications(t *testing.T) {
	a, b, c := confinfo.User{Entity: "a"}, confinfo.User{Entity: "b"}, confinfo.User{Entity: "c"}
	gone := func(e string) confinfo.User { return confinfo.User{Entity: e, State: confinfo.Deleted} }
	full := notifyJob{doc: &confinfo.Info{State: confinfo.Full, Users: users(a, b)}, state: "active;expires=3600"}
	part := notifyJob{doc: &confinfo.Info{State: confinfo.Partial, Users: users(c, gone("a"))}, state: "active"}
	m, ok := merge(full, part)
	if !ok || m.doc.State != confinfo.Full || m.state != "active;expires=3600" || len(m.doc.Users.Users) != 2 || m.doc.Users.Users[0].Entity != "b" || m.doc.Users.Users[1].Entity != "c" {
		t.Fatalf("full + partial: %+v", m.doc.Users)
	}
	p1 := notifyJob{doc: &confinfo.Info{State: confinfo.Partial, Users: users(a)}, state: "active"}
	m, ok = merge(p1, notifyJob{doc: &confinfo.Info{State: confinfo.Partial, Users: users(gone("a"), b)}, state: "active"})
	if !ok || m.doc.State != confinfo.Partial || len(m.doc.Users.Users) != 2 || m.doc.Users.Users[0].State != confinfo.Deleted {
		t.Fatalf("partial + partial: %+v", m.doc.Users)
	}
	if m, ok := merge(p1, full); !ok || m.doc != full.doc {
		t.Fatal("full state does not replace a partial document")
	}
	if _, ok := merge(p1, notifyJob{doc: &confinfo.Info{State: confinfo.Deleted}, state: "terminated;reason=deactivated"}); ok {
		t.Fatal("the final NOTIFY was folded")
	}
	if p1.doc.Users.Users[0].Entity != "a" || len(full.doc.Users.Users) != 2 {
		t.Fatal("merge changed its inputs")
	}
}

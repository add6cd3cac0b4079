package edge

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// contactFlows remembers over which connection each remote user's contact
// last registered (after the core said 2xx), so that a request in a dialog
// whose connection has gone, since the user connected and registered
// again, reaches them over the new one (RFC 5626 §5.3 leaves the dialog
// to the UA; this keeps a call through a roaming phone's reconnection).
// Keyed by the address-of-record too: a user can name any contact, but
// only under their own AOR, and a request in a dialog names its target's
// AOR in To.
type contactFlows struct {
	mu  sync.Mutex
	m   map[contactKey]contactFlow
	max int
}

type contactKey struct{ aor, contact string }

type contactFlow struct {
	flow  string
	until time.Time
}

func newContactFlows(max int) *contactFlows {
	return &contactFlows{m: map[contactKey]contactFlow{}, max: max}
}

// aorKey is an AOR's key: user@host, the host in lower case.
func aorKey(u sip.Uri) string { return u.User + "@" + strings.ToLower(u.Host) }

// contactKeyOf is a contact URI's key: user@host:port, the host in lower
// case (what a dialog's remote target and a registered contact share).
func contactKeyOf(u sip.Uri) string {
	return u.User + "@" + strings.ToLower(u.Host) + ":" + strconv.Itoa(u.Port)
}

// learn records the contacts of a REGISTER that the core accepted (res, a
// 2xx, lists each binding with the expiry granted), from flow.
func (c *contactFlows) learn(req *sip.Request, res *sip.Response, flow string, now time.Time) {
	to := req.To()
	if to == nil {
		return
	}
	aor := aorKey(to.Address)
	asked, all := map[string]bool{}, false
	for _, h := range req.GetHeaders("Contact") {
		if ch, ok := h.(*sip.ContactHeader); ok {
			asked[contactKeyOf(ch.Address)] = true
			all = all || ch.Address.Wildcard
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if all { // "Contact: *": every binding of the AOR ends
		for k := range c.m {
			if k.aor == aor {
				delete(c.m, k)
			}
		}
		return
	}
	for k := range asked {
		delete(c.m, contactKey{aor, k}) // unregistered unless the answer lists it
	}
	for _, h := range res.GetHeaders("Contact") {
		ch, ok := h.(*sip.ContactHeader)
		if !ok || !asked[contactKeyOf(ch.Address)] {
			continue
		}
		secs, err := strconv.Atoi(ch.Params.GetOr("expires", ""))
		if err != nil || secs <= 0 {
			continue
		}
		if len(c.m) >= c.max {
			c.sweep(now)
			if len(c.m) >= c.max {
				return
			}
		}
		c.m[contactKey{aor, contactKeyOf(ch.Address)}] = contactFlow{flow: flow, until: now.Add(time.Duration(secs) * time.Second)}
	}
}

// lookup is the flow a contact of aor last registered from, if unexpired.
func (c *contactFlows) lookup(aor, contact sip.Uri, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.m[contactKey{aorKey(aor), contactKeyOf(contact)}]
	if !ok || now.After(f.until) {
		return "", false
	}
	return f.flow, true
}

func (c *contactFlows) sweep(now time.Time) {
	for k, f := range c.m {
		if now.After(f.until) {
			delete(c.m, k)
		}
	}
}

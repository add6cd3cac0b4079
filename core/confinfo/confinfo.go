// Package confinfo is the RFC 4575 conference event package codec
// (application/conference-info+xml): full state first, then partial
// documents with increasing versions (PROTOCOLS.md).
package confinfo

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
)

// NS and ContentType of conference-info documents; Event is the SIP event
// package name.
const (
	NS          = "urn:ietf:params:xml:ns:conference-info"
	ContentType = "application/conference-info+xml"
	Event       = "conference"
	// MaxSize bounds a document read from the network.
	MaxSize = 1 << 20
)

// Document states (RFC 4575 §5.1) and endpoint statuses (§5.7.2) used here.
const (
	Full    = "full"
	Partial = "partial"
	Deleted = "deleted"

	Connected    = "connected"
	Pending      = "pending" // waiting in the lobby
	Disconnected = "disconnected"
)

// ErrMalformed is returned for a body that is not a conference-info document.
var ErrMalformed = errors.New("malformed conference-info document")

// Info is a conference-info document.
type Info struct {
	XMLName     xml.Name     `xml:"urn:ietf:params:xml:ns:conference-info conference-info"`
	Entity      string       `xml:"entity,attr"`
	State       string       `xml:"state,attr"`
	Version     uint64       `xml:"version,attr"`
	Description *Description `xml:"conference-description,omitempty"`
	HostInfo    *HostInfo    `xml:"host-info,omitempty"`
	ConfState   *ConfState   `xml:"conference-state,omitempty"`
	Users       *Users       `xml:"users,omitempty"`
}

// Description is conference-description.
type Description struct {
	Subject string `xml:"subject,omitempty"`
}

// HostInfo names the organiser.
type HostInfo struct {
	DisplayText string `xml:"display-text,omitempty"`
	URI         string `xml:"uris>entry>uri,omitempty"`
}

// ConfState is conference-state: user count, active, locked.
type ConfState struct {
	UserCount *int  `xml:"user-count,omitempty"`
	Active    *bool `xml:"active,omitempty"`
	Locked    *bool `xml:"locked,omitempty"`
}

// Users lists users (all of them in a full document; the changed ones in a
// partial one).
type Users struct {
	State string `xml:"state,attr,omitempty"`
	Users []User `xml:"user"`
}

// User is one participant.
type User struct {
	Entity      string     `xml:"entity,attr"`
	State       string     `xml:"state,attr,omitempty"`
	DisplayText string     `xml:"display-text,omitempty"`
	Roles       []string   `xml:"roles>entry,omitempty"`
	Endpoints   []Endpoint `xml:"endpoint,omitempty"`
}

// Endpoint is a participant's device in the conference.
type Endpoint struct {
	Entity        string  `xml:"entity,attr"`
	State         string  `xml:"state,attr,omitempty"`
	Status        string  `xml:"status,omitempty"`
	JoiningMethod string  `xml:"joining-method,omitempty"`
	Media         []Media `xml:"media,omitempty"`
}

// Media is one medium of an endpoint.
type Media struct {
	ID     string `xml:"id,attr"`
	Type   string `xml:"type,omitempty"`
	Status string `xml:"status,omitempty"`
}

// Marshal encodes a document with the XML header.
func Marshal(i *Info) []byte {
	b, err := xml.Marshal(i)
	if err != nil {
		panic(err) // values of this package always encode
	}
	return append([]byte(xml.Header), b...)
}

// Parse reads a document and checks its state and entity.
func Parse(b []byte) (*Info, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxSize)
	}
	var i Info
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	if err := d.Decode(&i); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if i.State != Full && i.State != Partial && i.State != Deleted {
		return nil, fmt.Errorf("%w: state %q", ErrMalformed, i.State)
	}
	if i.Entity == "" {
		return nil, fmt.Errorf("%w: no entity", ErrMalformed)
	}
	return &i, nil
}

// Roster is a subscriber's view of the users, kept up to date by Apply.
type Roster struct {
	Entity  string
	Version uint64
	Locked  bool
	Users   map[string]User
}

// ErrGap says a partial document does not follow the last version seen:
// the subscriber must fetch full state again (RFC 4575 §4.6).
var ErrGap = errors.New("conference-info version gap")

// Apply merges a document into the roster: a full one replaces it (unless
// it is older than what was applied); a partial one must carry the next
// version; users in state deleted leave.
func (r *Roster) Apply(i *Info) error {
	switch {
	case i.State == Full && r.Users != nil && i.Version <= r.Version:
		return nil // stale: a later document was applied already (out of order delivery)
	case i.State == Full:
		r.Entity, r.Users = i.Entity, map[string]User{}
	case r.Users == nil || i.Version != r.Version+1:
		return ErrGap
	}
	r.Version = i.Version
	if i.ConfState != nil && i.ConfState.Locked != nil {
		r.Locked = *i.ConfState.Locked
	}
	if i.Users != nil {
		for _, u := range i.Users.Users {
			if u.State == Deleted {
				delete(r.Users, u.Entity)
				continue
			}
			r.Users[u.Entity] = u
		}
	}
	return nil
}

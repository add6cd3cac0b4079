// Package c3p is the Centralized Conference Control Protocol codec
// ([MS-CONFBAS], PROTOCOLS.md): a request names one command; the response
// echoes its requestId and says success, pending or failure (with a
// reason). It is carried in SIP INFO to a Focus, in SIP SERVICE to the
// Focus Factory, and over HTTPS between the Focus and MCUs. The shapes
// Portcullis uses are listed in docs/c3p.md.
package c3p

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// Namespaces and the content type.
const (
	NS          = "urn:ietf:params:xml:ns:cccp"
	MSNS        = "http://schemas.microsoft.com/rtc/2005/08/cccpextensions"
	ContentType = "application/cccp+xml"
	Version     = "1"
	// MaxSize bounds a C3P body.
	MaxSize = 64 << 10
)

// Response codes.
const (
	Success = "success"
	Pending = "pending"
	Failure = "failure"
)

// Failure reasons (a small fixed set; [MS-CONFBAS] names).
const (
	ReasonMalformed       = "requestMalformed"
	ReasonNotSupported    = "commandNotSupported"
	ReasonForbidden       = "forbidden"
	ReasonNoConference    = "conferenceDoesNotExist"
	ReasonNoUser          = "userDoesNotExist"
	ReasonLocked          = "conferenceLocked"
	ReasonBadArgument     = "invalidArgument"
	ReasonInternal        = "internalError"
	ReasonAlreadyAdmitted = "userAlreadyAdmitted"
)

// ErrMalformed is returned for a body that is not a C3P request.
var ErrMalformed = errors.New("malformed C3P request")

// Commands this package knows by name.
var Commands = []string{
	"addConference", "deleteConference", "modifyConference", "getConference", "getConferences",
	"modifyConferenceLock", "addUser", "deleteUser", "modifyUser", "modifyUserRoles", "setUserAccess",
	"addEndpointMedia", "deleteEndpointMedia", "ping",
}

// Request is one C3P request.
type Request struct {
	XMLName   xml.Name `xml:"urn:ietf:params:xml:ns:cccp request"`
	Version   string   `xml:"C3PVersion,attr"`
	To        string   `xml:"to,attr"`
	From      string   `xml:"from,attr"`
	RequestID string   `xml:"requestId,attr"`
	Command   Command  `xml:",any"`
}

// Command is the request's one command element. Which fields mean
// something depends on Name (docs/c3p.md).
type Command struct {
	XMLName xml.Name
	Keys    *Keys `xml:"conferenceKeys,omitempty"`
	// addConference, modifyConference.
	Organizer string `xml:"organizer,omitempty"`
	Subject   string `xml:"subject,omitempty"`
	Admission string `xml:"admission,omitempty"` // open | closed | anonymous
	Lobby     *bool  `xml:"lobby,omitempty"`
	Expires   string `xml:"expires,omitempty"` // RFC 3339 or a date
	// modifyConferenceLock.
	Locked *bool `xml:"locked,omitempty"`
	// addUser, deleteUser, modifyUser, modifyUserRoles, setUserAccess.
	User *User `xml:"user,omitempty"`
	// setUserAccess: admit | deny (a user waiting in the lobby).
	Access string `xml:"access,omitempty"`
	// addEndpointMedia, deleteEndpointMedia.
	Media *Media `xml:"media,omitempty"`
	// ping from an MCU to the Conferencing Server Factory: its heartbeat.
	MCU *MCU `xml:"mcu,omitempty"`
}

// MCU is an MCU's registration and load, sent in its heartbeat.
type MCU struct {
	ID   string `xml:"id,attr"`
	Type string `xml:"type,attr"` // chat | audio-video | data
	URI  string `xml:"uri,attr"`
	Load int    `xml:"load,attr"`
}

// Name is the command's name.
func (c Command) Name() string { return c.XMLName.Local }

// Keys names a conference.
type Keys struct {
	ConfEntity string `xml:"confEntity,attr"`
	// ConferenceKey is the numeric key for anonymous join (responses).
	ConferenceKey string `xml:"conferenceKey,attr,omitempty"`
}

// User is a participant.
type User struct {
	Entity      string   `xml:"entity,attr"`
	DisplayName string   `xml:"display-text,omitempty"`
	Roles       []string `xml:"roles>entry,omitempty"`
}

// Media is an endpoint's media in a conference (the IM MCU: type chat).
type Media struct {
	ID     string `xml:"id,attr"`
	Type   string `xml:"type"`
	Status string `xml:"status,omitempty"`
}

// Response answers a request.
type Response struct {
	XMLName   xml.Name `xml:"urn:ietf:params:xml:ns:cccp response"`
	Version   string   `xml:"C3PVersion,attr"`
	To        string   `xml:"to,attr"`
	From      string   `xml:"from,attr"`
	RequestID string   `xml:"requestId,attr"`
	Code      string   `xml:"code,attr"`
	Reason    string   `xml:"reason,attr,omitempty"`
	// Result is the echoed command element with what it returns.
	Result *Result `xml:",any,omitempty"`
}

// Result carries what a command returns.
type Result struct {
	XMLName     xml.Name
	Keys        *Keys        `xml:"conferenceKeys,omitempty"`
	Conferences []Conference `xml:"conference,omitempty"`
	// ErrorText explains a failure to a person.
	ErrorText string `xml:"errorText,omitempty"`
}

// Conference describes a meeting (getConference, getConferences).
type Conference struct {
	Entity    string `xml:"confEntity,attr"`
	Key       string `xml:"conferenceKey,attr,omitempty"`
	Organizer string `xml:"organizer,attr"`
	Subject   string `xml:"subject,attr,omitempty"`
	Admission string `xml:"admission,attr"`
	Lobby     bool   `xml:"lobby,attr"`
	Locked    bool   `xml:"locked,attr"`
	Expires   string `xml:"expires,attr,omitempty"`
	Users     []User `xml:"user,omitempty"`
}

// Parse reads a request. It checks the envelope (namespace, requestId,
// one command) but not the command's arguments: the handler of each
// command does, and answers a failure.
func Parse(b []byte) (*Request, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxSize)
	}
	var r Request
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	switch {
	case r.RequestID == "" || len(r.RequestID) > 64:
		return nil, fmt.Errorf("%w: requestId missing or too long", ErrMalformed)
	case r.Command.Name() == "":
		return nil, fmt.Errorf("%w: no command", ErrMalformed)
	case len(r.From) > 512 || len(r.To) > 512:
		return nil, fmt.Errorf("%w: address too long", ErrMalformed)
	}
	return &r, nil
}

// Marshal encodes a request or a response with the XML header.
func Marshal(v any) []byte {
	b, err := xml.Marshal(v)
	if err != nil {
		// Only values of this package are marshalled; they always encode.
		panic(err)
	}
	return append([]byte(xml.Header), b...)
}

// NewRequest is a request for one command.
func NewRequest(from, to, requestID string, c Command) *Request {
	return &Request{Version: Version, From: from, To: to, RequestID: requestID, Command: c}
}

// Cmd starts a command element called name.
func Cmd(name string) Command { return Command{XMLName: xml.Name{Space: NS, Local: name}} }

// Reply is the response to r: code, and for a failure the reason and a
// text for people.
func Reply(r *Request, code, reason, text string) *Response {
	res := &Response{Version: Version, To: r.From, From: r.To, RequestID: r.RequestID, Code: code, Reason: reason,
		Result: &Result{XMLName: xml.Name{Space: NS, Local: r.Command.Name()}}}
	if text != "" {
		res.Result.ErrorText = text
	}
	return res
}

// ParseResponse reads a response.
func ParseResponse(b []byte) (*Response, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxSize)
	}
	var r Response
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if r.Code != Success && r.Code != Pending && r.Code != Failure {
		return nil, fmt.Errorf("%w: code %q", ErrMalformed, r.Code)
	}
	return &r, nil
}

// Known reports whether a command name is one of Commands.
func Known(name string) bool {
	for _, c := range Commands {
		if c == name {
			return true
		}
	}
	return false
}

// IsC3P reports whether a Content-Type is C3P's.
func IsC3P(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), ContentType)
}

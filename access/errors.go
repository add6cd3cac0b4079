package access

import "errors"

var (
	// ErrExists is returned when PKI material would be overwritten.
	ErrExists = errors.New("already exists")
	// ErrNoCA is returned when a PKI directory holds no CA.
	ErrNoCA = errors.New("no CA in directory")
	// ErrPeerRefused is matched by every *PeerRefusedError.
	ErrPeerRefused = errors.New("peer certificate refused")
)

// Refusal reasons, a small fixed set usable as a metric label.
const (
	ReasonNoCertificate   = "no_certificate"
	ReasonUnknownCA       = "unknown_authority"
	ReasonExpired         = "expired"
	ReasonWrongUsage      = "wrong_key_usage"
	ReasonNameNotAllowed  = "name_not_allowed"
	ReasonBadCertificate  = "bad_certificate"
	ReasonHandshakeFailed = "handshake_failed"
	ReasonTimeout         = "handshake_timeout"
	ReasonConnectionCap   = "connection_cap"
	ReasonSlowMessage     = "slow_message"      // a SIP message not complete within the message timeout
	ReasonMessageTooLarge = "message_too_large" // a SIP message over the listener's size limit
)

// PeerRefusedError says why a peer's certificate was not accepted.
type PeerRefusedError struct {
	Reason string   // one of the Reason constants
	Names  []string // names the certificate carries, if it was parsed
	Err    error    // underlying detail
}

func (e *PeerRefusedError) Error() string {
	s := "peer certificate refused: " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *PeerRefusedError) Unwrap() []error { return []error{ErrPeerRefused, e.Err} }

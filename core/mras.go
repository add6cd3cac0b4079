package core

import (
	"context"
	"encoding/xml"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"portcullis/access"
)

// MRAS: TURN credentials for users over SIP ([MS-AVEDGEA], PROTOCOLS.md).

const mrasContentType = "application/msrtc-media-relay-auth+xml"

const mrasNS = "http://schemas.microsoft.com/2006/09/sip/mrasp"

// MRASRequest is the body of a credentials request.
type MRASRequest struct {
	XMLName   xml.Name `xml:"http://schemas.microsoft.com/2006/09/sip/mrasp request"`
	RequestID string   `xml:"requestID,attr"`
	From      string   `xml:"from,attr"`
	To        string   `xml:"to,attr"`
	Version   string   `xml:"version,attr"`
	Cred      struct {
		ID       string `xml:"credentialsRequestID,attr"`
		Identity string `xml:"identity"`
		Location string `xml:"location"`
		Duration int    `xml:"duration"` // minutes
	} `xml:"credentialsRequest"`
}

// ErrMRAS is returned for a credentials request that cannot be read.
var ErrMRAS = errors.New("malformed media relay credentials request")

// ParseMRAS reads a credentials request (at most 16 KiB).
func ParseMRAS(b []byte) (*MRASRequest, error) {
	if len(b) > 16<<10 {
		return nil, ErrMRAS
	}
	var r MRASRequest
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, errors.Join(ErrMRAS, err)
	}
	if r.Cred.Identity == "" || r.RequestID == "" || len(r.RequestID) > 128 || len(r.Cred.ID) > 128 {
		return nil, ErrMRAS
	}
	return &r, nil
}

type mrasResponse struct {
	XMLName      xml.Name `xml:"response"`
	NS           string   `xml:"xmlns,attr"`
	RequestID    string   `xml:"requestID,attr"`
	Version      string   `xml:"version,attr"`
	ServerVer    string   `xml:"serverVersion,attr"`
	To           string   `xml:"to,attr"`
	From         string   `xml:"from,attr"`
	ReasonPhrase string   `xml:"reasonPhrase,attr"`
	Cred         struct {
		ID          string `xml:"credentialsRequestID,attr"`
		Credentials struct {
			Username string `xml:"username"`
			Password string `xml:"password"`
			Duration int    `xml:"duration"`
		} `xml:"credentials"`
		Relays []mrasRelay `xml:"mediaRelayList>mediaRelay"`
	} `xml:"credentialsResponse"`
}

type mrasRelay struct {
	Location string `xml:"location"`
	Host     string `xml:"hostName"`
	UDPPort  int    `xml:"udpPort,omitempty"`
	TCPPort  int    `xml:"tcpPort,omitempty"`
}

// relays turns turn: URIs (RFC 7065) into MRAS relay entries, one per host.
func relays(uris []string) []mrasRelay {
	var out []mrasRelay
	idx := map[string]int{}
	for _, u := range uris {
		rest, ok := strings.CutPrefix(u, "turn:")
		if !ok {
			continue // turns: is not in the MRAS relay list
		}
		hostport, query, _ := strings.Cut(rest, "?")
		host, portStr, err := net.SplitHostPort(hostport)
		if err != nil {
			host, portStr = hostport, "3478"
		}
		port, _ := strconv.Atoi(portStr)
		q, _ := url.ParseQuery(query)
		i, seen := idx[host]
		if !seen {
			i = len(out)
			idx[host] = i
			out = append(out, mrasRelay{Location: "internet", Host: host})
		}
		if q.Get("transport") == "tcp" {
			out[i].TCPPort = port
		} else {
			out[i].UDPPort = port
		}
	}
	return out
}

// mras answers SERVICE requests for media relay credentials.
type mras struct {
	*authenticator
	secret func() []byte // the TURN secret in force
	turn   func() TURNConfig
	log    *slog.Logger
}

func (m *mras) service(_ *access.PeerIdentity, req *sip.Request, tx sip.ServerTransaction) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ct := req.ContentType(); ct == nil || !strings.EqualFold(strings.TrimSpace(strings.Split(ct.Value(), ";")[0]), mrasContentType) {
		m.refuse(tx, req, 415, "Unsupported Media Type", "service_content_type", sip.NewHeader("Accept", mrasContentType))
		return
	}
	user, ok := m.homeSender(ctx, tx, req)
	if !ok {
		return
	}
	r, err := ParseMRAS(req.Body())
	if err != nil {
		m.refuse(tx, req, 400, "Bad Request (media relay credentials request)", "service_body")
		return
	}
	if id, _, _, err := ParseAOR(r.Cred.Identity); err != nil || id != user.AOR {
		m.refuse(tx, req, 403, "Forbidden (credentials may be asked for oneself only)", "service_identity")
		return
	}
	cfg := m.turn()
	ttl := cfg.TTL
	if d := r.Cred.Duration; d > 0 {
		// In minutes, so that a huge one cannot overflow into the past.
		ttl = cfg.MaxTTL
		if int64(d) < int64(cfg.MaxTTL/time.Minute) {
			ttl = time.Duration(d) * time.Minute
		}
	}
	c := access.IssueTURN(m.secret(), user.AOR, ttl, time.Now())
	var res mrasResponse
	res.NS, res.RequestID, res.Version, res.ServerVer = mrasNS, r.RequestID, "1.0", "2"
	res.To, res.From, res.ReasonPhrase = r.From, r.To, "OK"
	res.Cred.ID = r.Cred.ID
	res.Cred.Credentials.Username, res.Cred.Credentials.Password = c.Username, c.Password
	res.Cred.Credentials.Duration = int(ttl / time.Minute)
	res.Cred.Relays = relays(cfg.URIs)
	body, err := xml.Marshal(res)
	if err != nil {
		m.respond(tx, req, 500, "Server Internal Error")
		return
	}
	out := sip.NewResponseFromRequest(req, 200, "OK", append([]byte(xml.Header), body...))
	out.AppendHeader(sip.NewHeader("Content-Type", mrasContentType))
	if err := tx.Respond(out); err != nil {
		m.log.Warn("sending MRAS answer failed", "error", err)
	}
	m.log.Info("turn credential issued", "user", user.AOR, "via", "sip", "minutes", int(ttl/time.Minute))
}

package core

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"portcullis/access"
	"portcullis/internal/ops"
)

// APIConfig is the core's `https` section: C3P, content and APIs.
type APIConfig struct {
	Listen string `yaml:"listen"`
	// Limits cap the connections, handshakes in progress included.
	Limits access.ConnCaps `yaml:"limits"`
}

// TURNConfig is the core's `turn` section: issuing relay credentials (the
// MRAS role) with the secret the edges' relays verify.
type TURNConfig struct {
	SecretFile string        `yaml:"secret_file"`
	TTL        time.Duration `yaml:"ttl"`     // default validity
	MaxTTL     time.Duration `yaml:"max_ttl"` // longest a caller may ask for
	// URIs are handed out with each credential (RFC 7065 turn:/turns:).
	URIs []string `yaml:"uris"`
}

// api is the core's HTTPS listener. Every caller must present a client
// certificate from the internal CA, and not an edge's (notEdges).
type api struct {
	*ops.Server
	log     *slog.Logger
	secret  func() []byte // the TURN secret in force
	turn    func() TURNConfig
	factory *Factory
	csf     *serverFactory
}

func newAPI(cfg APIConfig, m *access.Material, edges *access.AllowList, secret func() []byte, turn func() TURNConfig, factory *Factory, log *slog.Logger, refused func(string)) (*api, error) {
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{m.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.Roots,
	}
	inner, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	// Capped before TLS: anyone who reaches the port can hold a
	// connection until the server's read timeout ends its handshake.
	ln := tls.NewListener(access.CapListener(inner, cfg.Limits, log, refused), tlsConf)
	a := &api{log: log, secret: secret, turn: turn, factory: factory}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/turn-credentials", a.turnCredentials)
	mux.HandleFunc("/v1/meetings", a.meetings)
	mux.HandleFunc("/v1/meetings/", a.meetings)
	mux.HandleFunc("/v1/c3p", a.c3pOverHTTPS)
	a.Server = ops.Serve(ln, notEdges(edges, mux, log), log)
	return a, nil
}

// callerNames are the names in the caller's client certificate (none
// without one).
func callerNames(r *http.Request) []string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return access.CertNames(r.TLS.PeerCertificates[0])
}

// notEdges refuses callers holding an edge's certificate (a name in
// trusted_edges) with 403: an edge serves users over SIP and never needs
// this API, and an edge in the DMZ that fell to an attacker must not list
// the meetings and their keys, delete them, or report as an MCU.
func notEdges(edges *access.AllowList, next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if names := callerNames(r); len(names) > 0 {
			if name, ok := edges.Match(names); ok {
				log.Warn("https caller refused", "remote", r.RemoteAddr, "name", name, "reason", "edge_certificate", "path", r.URL.Path)
				http.Error(w, "an edge's certificate may not use the core's API", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type turnCredRequest struct {
	User string `json:"user"`
	TTL  string `json:"ttl,omitempty"`
}

type turnCredResponse struct {
	Username string    `json:"username"`
	Password string    `json:"password"`
	TTL      int64     `json:"ttl"`
	Expires  time.Time `json:"expires"`
	URIs     []string  `json:"uris"`
}

const maxAPIBody = 4 << 10

// turnCredentials is POST /v1/turn-credentials: {"user": "...", "ttl": "8h"}.
func (a *api) turnCredentials(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	var req turnCredRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAPIBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	if req.User == "" || len(req.User) > 256 {
		http.Error(w, `"user" must be 1 to 256 characters`, http.StatusBadRequest)
		return
	}
	cfg := a.turn()
	ttl := cfg.TTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			http.Error(w, `"ttl" must be a positive duration such as "8h"`, http.StatusBadRequest)
			return
		}
		ttl = min(d, cfg.MaxTTL)
	}
	c := access.IssueTURN(a.secret(), req.User, ttl, time.Now())
	caller := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		caller = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	a.log.Info("turn credential issued", "user", req.User, "caller", caller, "expires", c.Expires.UTC().Format(time.RFC3339))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(turnCredResponse{Username: c.Username, Password: c.Password,
		TTL: int64(ttl / time.Second), Expires: c.Expires.UTC(), URIs: cfg.URIs})
}

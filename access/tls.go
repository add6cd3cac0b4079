package access

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"portcullis/internal/config"
)

// TrustHeader is the edge's trust header ([MS-SIPRE]): only an edge sets it
// on what it forwards inward; a copy from anyone else is removed.
const TrustHeader = "ms-edge-proxy-message-trust"

// TLSFiles is the config section naming a node's internal PKI material.
type TLSFiles struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Validate checks that every file is named.
func (f *TLSFiles) Validate(v *config.V) {
	v.CheckNotEmpty("ca_file", f.CAFile)
	v.CheckNotEmpty("cert_file", f.CertFile)
	v.CheckNotEmpty("key_file", f.KeyFile)
}

// Resolve makes relative paths relative to base.
func (f *TLSFiles) Resolve(base string) {
	for _, p := range []*string{&f.CAFile, &f.CertFile, &f.KeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}

// ConnCaps is the config section capping a mutual-TLS listener's
// connections, handshakes in progress included: anyone who can reach the
// listener can open connections before the handshake refuses them, each
// held up to the handshake timeout. Past a cap a new connection is closed
// at once and counted as `connection_cap`.
type ConnCaps struct {
	ConnectionsPerAddress int `yaml:"connections_per_address"`
	MaxConnections        int `yaml:"max_connections"`
}

// DefaultConnCaps leave room for many peers (an edge or a core holds one
// or two connections to another) and bound what one address can hold.
func DefaultConnCaps() ConnCaps { return ConnCaps{ConnectionsPerAddress: 64, MaxConnections: 4096} }

// Validate checks the caps.
func (c *ConnCaps) Validate(v *config.V) {
	v.Check(c.ConnectionsPerAddress >= 1, "connections_per_address", "must be at least 1")
	v.Check(c.MaxConnections >= c.ConnectionsPerAddress, "max_connections", "must be at least connections_per_address")
}

// Material is a node's loaded PKI: the CA pool it trusts and its own key pair.
type Material struct {
	Roots *x509.CertPool
	Cert  tls.Certificate
	Leaf  *x509.Certificate
}

// LoadMaterial reads the files. A missing file is reported with the file name
// and the `portcullis pki` command that creates it.
func LoadMaterial(f TLSFiles) (*Material, error) {
	caCerts, err := readCerts(f.CAFile)
	if err != nil {
		return nil, missingHint(err, f.CAFile, fmt.Sprintf("portcullis pki init --dir %s", filepath.Dir(f.CAFile)))
	}
	name := strings.TrimSuffix(filepath.Base(f.CertFile), filepath.Ext(f.CertFile))
	issueHint := fmt.Sprintf("portcullis pki issue --dir %s --name %s --san %s", filepath.Dir(f.CertFile), name, name)
	for _, p := range []string{f.CertFile, f.KeyFile} {
		if _, err := os.Stat(p); err != nil {
			return nil, missingHint(err, p, issueHint)
		}
	}
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s / %s: %w", f.CertFile, f.KeyFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range caCerts {
		pool.AddCert(c)
	}
	return &Material{Roots: pool, Cert: pair, Leaf: pair.Leaf}, nil
}

// LoadServerPair loads a public certificate and key (no CA): the material of
// a listener that faces the internet.
func LoadServerPair(certFile, keyFile string) (*Material, error) {
	for _, p := range []string{certFile, keyFile} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s / %s: %w", certFile, keyFile, err)
	}
	return &Material{Roots: x509.NewCertPool(), Cert: pair, Leaf: pair.Leaf}, nil
}

func missingHint(err error, file, cmd string) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: file does not exist; create it with `%s`", file, cmd)
	}
	return fmt.Errorf("%s: %w", file, err)
}

// AllowList is the set of certificate names a listener admits (the core's
// trusted-edge table). It can be swapped at run time (config reload).
type AllowList struct {
	names atomic.Pointer[[]string]
}

// NewAllowList returns a list holding names.
func NewAllowList(names []string) *AllowList {
	a := &AllowList{}
	a.Set(names)
	return a
}

// Set replaces the names. Matching is case-insensitive.
func (a *AllowList) Set(names []string) {
	lower := make([]string, len(names))
	for i, n := range names {
		lower[i] = strings.ToLower(n)
	}
	a.names.Store(&lower)
}

// Match returns the first of the certificate's names that is allowed.
func (a *AllowList) Match(names []string) (string, bool) {
	allowed := *a.names.Load()
	for _, n := range names {
		if slices.Contains(allowed, strings.ToLower(n)) {
			return n, true
		}
	}
	return "", false
}

// CertNames lists the DNS names a certificate asserts (its SANs; the common
// name only when it has no SANs at all).
func CertNames(c *x509.Certificate) []string {
	if len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 {
		names := slices.Clone(c.DNSNames)
		for _, ip := range c.IPAddresses {
			names = append(names, ip.String())
		}
		return names
	}
	if c.Subject.CommonName != "" {
		return []string{c.Subject.CommonName}
	}
	return nil
}

// VerifyPeer checks a client certificate chain against roots for client
// authentication and against the allow list. It returns the identity or a
// *PeerRefusedError.
func VerifyPeer(rawCerts [][]byte, roots *x509.CertPool, allow *AllowList) (*PeerIdentity, error) {
	leaf, names, err := verifyChain(rawCerts, roots)
	if err != nil {
		return nil, err
	}
	matched, ok := allow.Match(names)
	if !ok {
		return nil, &PeerRefusedError{Reason: ReasonNameNotAllowed, Names: names,
			Err: fmt.Errorf("none of %v is on the allow list", names)}
	}
	return &PeerIdentity{Certificate: leaf, Names: names, Name: matched}, nil
}

// VerifyPartner checks a federation partner's client certificate chain
// against the partner trust roots. Which domain its names may speak for is
// policy's decision, per request.
func VerifyPartner(rawCerts [][]byte, roots *x509.CertPool) (*PeerIdentity, error) {
	if roots == nil { // never the system's roots
		return nil, &PeerRefusedError{Reason: ReasonUnknownCA, Err: errors.New("no partner trust roots")}
	}
	leaf, names, err := verifyChain(rawCerts, roots)
	if err != nil {
		return nil, err
	}
	return &PeerIdentity{Certificate: leaf, Names: names, Partner: true}, nil
}

func verifyChain(rawCerts [][]byte, roots *x509.CertPool) (*x509.Certificate, []string, error) {
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, nil, &PeerRefusedError{Reason: ReasonBadCertificate, Err: err}
		}
		certs = append(certs, c)
	}
	return VerifyCerts(certs, roots, x509.ExtKeyUsageClientAuth)
}

// VerifyCerts checks a peer's chain (leaf first) against roots for usage
// and returns the leaf and its names, or a *PeerRefusedError.
func VerifyCerts(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) (*x509.Certificate, []string, error) {
	if len(certs) == 0 {
		return nil, nil, &PeerRefusedError{Reason: ReasonNoCertificate}
	}
	leaf := certs[0]
	names := CertNames(leaf)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return nil, nil, &PeerRefusedError{Reason: classify(err), Names: names, Err: err}
	}
	return leaf, names, nil
}

func classify(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return ReasonUnknownCA
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return ReasonExpired
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return ReasonWrongUsage
	}
	return ReasonBadCertificate
}

// ServerConfig is a TLS 1.2+ server config for material that requests a
// client certificate; verification (including "none given") is done by
// VerifyPeer in the Listener so that every refusal carries a reason and the
// remote address.
func ServerConfig(m *Material) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{m.Cert},
		ClientAuth:   tls.RequestClientCert,
	}
}

// ClientConfig is a TLS 1.2+ client config presenting the node's certificate
// and verifying the server against the private CA under serverName.
func ClientConfig(m *Material, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{m.Cert},
		RootCAs:      m.Roots,
		ServerName:   serverName,
	}
}

// LoadRoots reads a PEM file of CA certificates (e.g. federation partners'
// trust roots) into a pool; a file with none is an error.
func LoadRoots(file string) (*x509.CertPool, error) {
	certs, err := readCerts(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificates", file)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// ClientConfigAllow is a TLS 1.2+ client config presenting the node's
// certificate and accepting a server whose certificate chains to the
// private CA and names an entry of allow (the core dialling an edge's
// internal listener at the address a Path or a Record-Route gave: the
// edge is known by its certificate name, not by that address).
func ClientConfigAllow(m *Material, allow *AllowList) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		Certificates:       []tls.Certificate{m.Cert},
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, names, err := VerifyCerts(cs.PeerCertificates, m.Roots, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if _, ok := allow.Match(names); !ok {
				return &PeerRefusedError{Reason: ReasonNameNotAllowed, Names: names}
			}
			return nil
		},
	}
}

// Package accesstest makes throwaway private CAs and node certificates for
// tests.
package accesstest

import (
	"path/filepath"
	"testing"
	"time"

	"portcullis/access"
)

// PKI is a CA in a temporary folder.
type PKI struct {
	CA  *access.CA
	Dir string
}

// New creates a CA in a new temporary folder.
func New(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := access.InitCA(dir, "test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CA: ca, Dir: dir}
}

// CAFile is the CA certificate's path.
func (p *PKI) CAFile() string { return filepath.Join(p.Dir, access.CACertFile) }

// Node issues a certificate for name (server and client usage, SANs name and
// 127.0.0.1) and returns the node's TLS files.
func (p *PKI) Node(t testing.TB, name string) access.TLSFiles {
	t.Helper()
	return p.Issue(t, access.IssueRequest{Name: name, SANs: []string{name, "127.0.0.1"}, Usage: access.UsageServer | access.UsageClient})
}

// Issue issues any certificate and returns TLS files using it with this CA.
func (p *PKI) Issue(t testing.TB, r access.IssueRequest) access.TLSFiles {
	t.Helper()
	cert, key, err := p.CA.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	return access.TLSFiles{CAFile: p.CAFile(), CertFile: cert, KeyFile: key}
}

// Material loads files.
func Material(t testing.TB, f access.TLSFiles) *access.Material {
	t.Helper()
	m, err := access.LoadMaterial(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

package access_test

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"portcullis/access"
	"portcullis/access/accesstest"
)

func TestInitCAWritesKeyPrivateAndRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	ca, err := access.InitCA(dir, "x", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("CA cert: IsCA=%v alg=%v", ca.Cert.IsCA, ca.Cert.PublicKeyAlgorithm)
	}
	st, err := os.Stat(filepath.Join(dir, access.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := access.InitCA(dir, "x", time.Hour); !errors.Is(err, access.ErrExists) {
		t.Fatalf("second init: %v, want ErrExists", err)
	}
	if _, err := access.LoadCA(t.TempDir()); !errors.Is(err, access.ErrNoCA) || !strings.Contains(err.Error(), "portcullis pki init") {
		t.Fatalf("LoadCA of empty dir: %v", err)
	}
}

func TestIssueUsagesSANsAndVerification(t *testing.T) {
	p := accesstest.New(t)
	files := p.Issue(t, access.IssueRequest{Name: "core1.internal", SANs: []string{"core1.internal", "192.0.2.10"}, Usage: access.UsageServer})
	m := accesstest.Material(t, files)
	leaf := m.Leaf
	if leaf.DNSNames[0] != "core1.internal" || leaf.IPAddresses[0].String() != "192.0.2.10" {
		t.Fatalf("SANs: %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Fatalf("usage %v", leaf.ExtKeyUsage)
	}
	st, _ := os.Stat(files.KeyFile)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode().Perm())
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.Roots, DNSName: "core1.internal"}); err != nil {
		t.Fatalf("server cert does not verify: %v", err)
	}
	// A server-only certificate cannot be used as a client.
	_, err := access.VerifyPeer([][]byte{leaf.Raw}, m.Roots, access.NewAllowList([]string{"core1.internal"}))
	var pr *access.PeerRefusedError
	if !errors.As(err, &pr) || pr.Reason != access.ReasonWrongUsage {
		t.Fatalf("server cert as client: %v", err)
	}
	if _, _, err := p.CA.Issue(access.IssueRequest{Name: "core1.internal", Usage: access.UsageServer}); !errors.Is(err, access.ErrExists) {
		t.Fatalf("reissue: %v", err)
	}
	if _, _, err := p.CA.Issue(access.IssueRequest{Name: "../evil", Usage: access.UsageServer}); err == nil {
		t.Fatal("path-like name accepted")
	}
}

func TestLoadMaterialNamesMissingFileAndCommand(t *testing.T) {
	p := accesstest.New(t)
	_, err := access.LoadMaterial(access.TLSFiles{CAFile: p.CAFile(), CertFile: filepath.Join(p.Dir, "edge1.internal.crt"), KeyFile: filepath.Join(p.Dir, "edge1.internal.key")})
	if err == nil || !strings.Contains(err.Error(), "edge1.internal.crt") || !strings.Contains(err.Error(), "portcullis pki issue --dir "+p.Dir+" --name edge1.internal") {
		t.Fatalf("missing cert: %v", err)
	}
	_, err = access.LoadMaterial(access.TLSFiles{CAFile: "/nonexistent/pki/ca.crt", CertFile: "x", KeyFile: "y"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/pki/ca.crt") || !strings.Contains(err.Error(), "portcullis pki init --dir /nonexistent/pki") {
		t.Fatalf("missing CA: %v", err)
	}
}

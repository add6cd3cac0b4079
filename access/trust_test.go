package access_test

import (
	"testing"

	"portcullis/access"
)

func TestFederatedTrust(t *testing.T) {
	for _, c := range []struct {
		v, domain string
		ok        bool
	}{
		{"ms-source-type=DirectPartner;ms-ep-fqdn=edge1.internal;ms-source-verified-user=verified;ms-source-network=federation;ms-remote-fqdn=Partner.Test", "partner.test", true},
		{"ms-source-type=AutoFederation;ms-remote-fqdn=found.test", "found.test", true},
		{"ms-source-type=InternetUser;ms-ep-fqdn=edge1.internal", "", false},
		{"ms-source-type=DirectPartner", "", false},
		{"", "", false},
	} {
		d, ok := access.Federated(c.v)
		if d != c.domain || ok != c.ok {
			t.Errorf("%q: %q %v", c.v, d, ok)
		}
	}
}

func FuzzParseTrust(f *testing.F) {
	f.Add("ms-source-type=DirectPartner;ms-remote-fqdn=partner.test")
	f.Add(`ms-source-type="AutoFederation";;=;ms-remote-fqdn`)
	f.Fuzz(func(t *testing.T, v string) {
		access.ParseTrust(v)
		if d, ok := access.Federated(v); ok && d == "" {
			t.Fatal("federated without a domain")
		}
	})
}

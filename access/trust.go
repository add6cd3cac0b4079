package access

import "strings"

// Source types of the trust header ([MS-SIPRE]).
const (
	SourceInternetUser   = "InternetUser"
	SourceDirectPartner  = "DirectPartner"
	SourceAutoFederation = "AutoFederation"
)

// ParseTrust reads a trust header value (`k=v;k=v`) into its parameters,
// keys in lower case. A malformed value yields what could be read.
func ParseTrust(v string) map[string]string {
	out := map[string]string{}
	for _, p := range strings.Split(v, ";") {
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if k != "" {
			out[strings.ToLower(k)] = strings.Trim(strings.TrimSpace(val), `"`)
		}
	}
	return out
}

// Federated reports whether a trust header value says the request came
// from a federation partner, and names the partner's domain.
func Federated(v string) (domain string, ok bool) {
	t := ParseTrust(v)
	switch t["ms-source-type"] {
	case SourceDirectPartner, SourceAutoFederation:
		return strings.ToLower(t["ms-remote-fqdn"]), t["ms-remote-fqdn"] != ""
	}
	return "", false
}

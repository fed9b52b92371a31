// Package dnsname checks host names for X.509 DNS SANs. Configuration
// (agent/config) and the CA (agent/ca) apply the same rule, so a name the
// config accepts is never refused at mint time, and the reverse.
package dnsname

import "strings"

// Valid reports whether name is an RFC 1123 host name usable as a DNS SAN:
// at most 253 bytes, labels of 1–63 letters, digits and inner hyphens, a
// top-level label that is not all digits (so no IP addresses), and an
// optional leading "*." wildcard.
func Valid(name string) bool {
	if len(name) > 253 {
		return false
	}
	name = strings.TrimPrefix(name, "*.")
	if name == "" {
		return false
	}
	labels := strings.Split(name, ".")
	for _, label := range labels {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

// Package jwtpeek reads fields of a compact JWS without verifying it: for
// bookkeeping on tokens this process minted or fetched itself (which key
// signed it, its jti), never for a decision to trust one.
package jwtpeek

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// maxToken bounds what is decoded: JWT-SVIDs are a few KiB at most.
const maxToken = 64 << 10

// Header decodes the token's protected header into v.
func Header(token string, v any) error { return segment(token, 0, v) }

// Claims decodes the token's payload into v.
func Claims(token string, v any) error { return segment(token, 1, v) }

func segment(token string, i int, v any) error {
	if len(token) > maxToken {
		return errors.New("jwtpeek: token too large")
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return errors.New("jwtpeek: not a compact JWS")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		return errors.New("jwtpeek: bad base64url segment")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return errors.New("jwtpeek: bad JSON segment")
	}
	return nil
}

package tpm

import (
	"encoding/json"
	"testing"
)

// FuzzVerify feeds arbitrary evidence documents to the verifier (what a
// remote verifier receives from the network): it must return an error,
// never panic, and never accept.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"ek_public":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE","ek_tpmt_public":"ACMACwAF","ak_tpmt_public":"ACMACwAF","quote":"/1RDR4AY","signature":"MEUCIQ","pcr_bank":"sha256","pcrs":{"7":"00"}}`))
	f.Add([]byte(`{"ek_tpmt_public":"AAEACwADALIAIINxl2dEhLEwBOiGJx0Xq7UAzzbm6+DDt5Dt4sv3sWTsAAYAgABDABAIAAAAAAABAA==","ak_tpmt_public":"ACMACwAFAHIAAAAQABgACwADABAAIAAAACAAAA==","pcrs":{}}`))
	nonce := []byte("0123456789abcdef")
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev Evidence
		if json.Unmarshal(data, &ev) != nil {
			return
		}
		if _, err := Verify(&ev, nonce, nil, nil); err == nil {
			t.Fatalf("accepted arbitrary evidence: %s", data)
		}
		_, _, _ = NewChallenge(&ev)
	})
}

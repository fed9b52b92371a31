package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// fakeRetryingTPM is a fake: swtpm cannot be made to answer TPM_RC_RETRY
// on demand, so this transport answers RETRY (then YIELDED) before a
// success, to test the retry loop alone.
type fakeRetryingTPM struct {
	answers []tpm2.TPMRC
	sent    int
}

func (f *fakeRetryingTPM) Send([]byte) ([]byte, error) {
	rc := f.answers[min(f.sent, len(f.answers)-1)]
	f.sent++
	rsp := make([]byte, 10)
	binary.BigEndian.PutUint16(rsp[0:2], uint16(tpm2.TPMSTNoSessions))
	binary.BigEndian.PutUint32(rsp[2:6], 10)
	binary.BigEndian.PutUint32(rsp[6:10], uint32(rc))
	return rsp, nil
}

func (f *fakeRetryingTPM) Close() error { return nil }

func TestRetryOnTPMRCRetry(t *testing.T) {
	f := &fakeRetryingTPM{answers: []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCSuccess}}
	rsp, err := (&retrying{TPMCloser: f}).Send([]byte{0})
	if err != nil || f.sent != 3 || binary.BigEndian.Uint32(rsp[6:10]) != uint32(tpm2.TPMRCSuccess) {
		t.Fatalf("sent %d times, rsp %x, err %v: want 3 sends ending in success", f.sent, rsp, err)
	}
	// A TPM that keeps answering RETRY is given up on (bounded).
	stuck := &fakeRetryingTPM{answers: []tpm2.TPMRC{tpm2.TPMRCRetry}}
	rsp, _ = (&retrying{TPMCloser: stuck}).Send([]byte{0})
	if stuck.sent != 9 || binary.BigEndian.Uint32(rsp[6:10]) != uint32(tpm2.TPMRCRetry) {
		t.Fatalf("stuck TPM: sent %d times", stuck.sent)
	}
	// Other errors are not retried.
	other := &fakeRetryingTPM{answers: []tpm2.TPMRC{tpm2.TPMRCHandle}}
	if _, _ = (&retrying{TPMCloser: other}).Send([]byte{0}); other.sent != 1 {
		t.Fatalf("TPM_RC_HANDLE resent %d times", other.sent)
	}
}

// fakeHungTPM is a fake: a TPM that does not answer until released (a real
// one cannot be made to hang on demand).
type fakeHungTPM struct{ release chan struct{} }

func (f *fakeHungTPM) Send([]byte) ([]byte, error) {
	<-f.release
	return nil, errors.New("fake: released")
}

func (f *fakeHungTPM) Close() error { return nil }

func TestOperationsBoundedByDeadline(t *testing.T) {
	f := &fakeHungTPM{release: make(chan struct{})}
	tp := New(f)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := tp.Ping(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("hung TPM: %v, want ErrTimeout", err)
	}
	// The hung command still holds the TPM: the next caller gives up at its
	// own deadline instead of queueing forever.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := tp.Ping(ctx2); !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "waiting for the TPM") {
		t.Fatalf("second caller: %v", err)
	}
	close(f.release)
	if err := tp.Ping(context.Background()); err == nil || errors.Is(err, ErrTimeout) {
		t.Fatalf("after release: %v, want the transport's error", err)
	}
}

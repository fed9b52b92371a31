package federation

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind (an
// endpoint, fetcher or connection not ended with its context).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

package agent

import (
	"bytes"
	"flag"
	"fmt"
	"strings"
	"sync"
)

// transcript collects every log line and audit record the suite's agents
// produce, and the secrets (tokens, keys) the tests were handed, so that
// TestMain can check that no secret ever reached a log or the audit trail.
var transcript = &secretLog{}

type secretLog struct {
	mu      sync.Mutex
	text    bytes.Buffer
	secrets map[string]string // secret -> what it is
}

func (l *secretLog) add(p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.text.Write(p)
}

// noteSecret registers material that must never be logged.
func (l *secretLog) noteSecret(what, s string) {
	if len(s) < 16 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.secrets == nil {
		l.secrets = map[string]string{}
	}
	l.secrets[s] = what
}

// sweep fails when any secret, JWT-looking string or PEM key appears in the
// transcript, or when the transcript is too small to have been checked.
func (l *secretLog) sweep() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	text := l.text.String()
	// With the whole suite run, an almost empty transcript means the sweep
	// lost track of the logs; a -run subset may legitimately collect little.
	if f := flag.Lookup("test.run"); (f == nil || f.Value.String() == "") && (len(text) < 1000 || len(l.secrets) < 3) {
		return fmt.Errorf("secret sweep: only %d bytes of logs and %d secrets collected: the sweep would prove nothing", len(text), len(l.secrets))
	}
	for s, what := range l.secrets {
		if strings.Contains(text, s) {
			return fmt.Errorf("secret sweep: a %s appears in the agent logs or audit trail", what)
		}
	}
	for _, marker := range []string{"PRIVATE KEY", "eyJhbGciOi"} {
		if strings.Contains(text, marker) {
			return fmt.Errorf("secret sweep: %q appears in the agent logs or audit trail", marker)
		}
	}
	return nil
}

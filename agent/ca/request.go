package ca

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/nodeward/nodeward/internal/atomicfile"
)

// RequestDir is the directory in the data dir where `nodeward ca rotate`
// and `nodeward ca taint` leave requests for the running agent: one JSON
// file (Request) per request, named NAME.req; the agent applies it within
// a tick (1s) and replaces it by NAME.done holding the outcome. Only who
// can write the data dir (root or the agent's user) can make a request:
// the directory and each file must be owned by root or the agent's user
// and not be writable by group or others.
const RequestDir = "ca_requests"

// Request is one operator request.
type Request struct {
	Action string `json:"action"` // "rotate", "taint" or "rotate-tpm-root"
	Kind   string `json:"kind"`   // KindX509 or KindJWT
	Ref    string `json:"ref,omitempty"`
	// ActivateAfter is, for rotate-tpm-root, how long the new root is
	// published before it signs (a Go duration; "" means twice the bundle
	// refresh hint).
	ActivateAfter string `json:"activate_after,omitempty"`
}

// Outcome is what the agent wrote for a request (NAME.done).
type Outcome struct {
	OK      bool   `json:"ok"`
	Message string `json:"message"`
}

// maxActivateAfter bounds Request.ActivateAfter (as config durations are).
const maxActivateAfter = 8760 * time.Hour

var requestName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}\.req$`)

// Apply carries out r on the CA and says what it did.
func (c *CA) Apply(r Request) (string, error) {
	switch r.Action {
	case "rotate":
		if err := c.Rotate(r.Kind); err != nil {
			return "", err
		}
		c.mu.Lock()
		id := ""
		if a := c.find(r.Kind, StateActive); a != nil {
			id = a.ID
		}
		c.mu.Unlock()
		return fmt.Sprintf("rotated: new active %s authority %s; the previous one stays published until it expires (taint it to drop it now)", r.Kind, id), nil
	case "rotate-tpm-root":
		after := time.Duration(-1)
		if r.ActivateAfter != "" {
			d, err := time.ParseDuration(r.ActivateAfter)
			if err != nil || d < 0 || d > maxActivateAfter {
				return "", fmt.Errorf("%w: activate_after %q is not a duration from 0s to %v", ErrInvalidConfig, r.ActivateAfter, maxActivateAfter)
			}
			after = d
		}
		return c.RotateTPMRoot(after)
	case "taint":
		if err := c.Taint(r.Kind, r.Ref); err != nil {
			return "", err
		}
		return fmt.Sprintf("tainted %s authority %s: removed from the bundle; SVIDs it signed are re-minted", r.Kind, r.Ref), nil
	}
	return "", fmt.Errorf("%w: unknown action %q", ErrInvalidConfig, r.Action)
}

// applyRequest applies the pending requests in RequestDir.
func (c *CA) applyRequest() error {
	dir := filepath.Join(c.dir, RequestDir)
	st, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("requests: %w", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || !st.IsDir() || st.Mode().Perm()&0o022 != 0 ||
		(sys.Uid != 0 && int(sys.Uid) != os.Geteuid()) {
		return fmt.Errorf("requests: %s ignored: it must be a directory owned by root or the agent's user, not writable by group or others", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("requests: %w", err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".req") {
			continue
		}
		path := filepath.Join(dir, name)
		data, err := readFile(path, true)
		_ = os.Remove(path) // applied or refused: once
		if !requestName.MatchString(name) {
			errs = append(errs, fmt.Errorf("requests: %s ignored: bad name", name))
			continue
		}
		out := Outcome{}
		var r Request
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		switch {
		case err != nil:
			out.Message = "refused: " + err.Error()
		case dec.Decode(&r) != nil:
			out.Message = "refused: not a request"
		default:
			msg, err := c.Apply(r)
			out.OK, out.Message = err == nil, msg
			if err != nil {
				out.Message = err.Error()
			}
			c.log.Info("CA operator request", "action", r.Action, "kind", r.Kind, "ref", r.Ref, "ok", out.OK, "message", out.Message)
		}
		res, _ := json.Marshal(out)
		if err := atomicfile.Write(filepath.Join(dir, strings.TrimSuffix(name, ".req")+".done"), res, 0o600); err != nil {
			errs = append(errs, fmt.Errorf("requests: %w", err))
		}
	}
	return errors.Join(errs...)
}

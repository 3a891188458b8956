package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// recordSecret appends a secret this harness created or was handed to
// $IRONBOOT_TEST_LOG_DIR/secrets.jsonl (when that is set), for the suite's check that no
// ironboot log line carries one (tests/check-log-secrets.py). One write per line on an
// O_APPEND file, so concurrent harnesses and tests do not interleave.
func recordSecret(what, secret string) {
	dir := os.Getenv("IRONBOOT_TEST_LOG_DIR")
	if dir == "" || secret == "" {
		return
	}
	line, err := json.Marshal(map[string]string{"what": what, "secret": secret})
	if err != nil {
		secretFailed("encoding a secret record", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		secretFailed("creating "+dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "secrets.jsonl"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		secretFailed("recording a secret", err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		secretFailed("recording a secret", err)
	}
}

// secretFailed stops the harness: a secret that cannot be recorded would let the check
// pass without looking for it.
func secretFailed(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(2)
}

package config

import (
	"fmt"
	"os"
	"strings"
)

// Secret is a configured secret: inline text, `file:/path` (the file's content,
// trailing newline trimmed) or `env:NAME` (an environment variable). Its String
// and MarshalText never reveal the value.
type Secret string

// IsSet reports whether anything was configured.
func (s Secret) IsSet() bool { return s != "" }

// Resolve returns the secret's value.
func (s Secret) Resolve() (string, error) {
	v := string(s)
	switch {
	case strings.HasPrefix(v, "file:"):
		name := strings.TrimPrefix(v, "file:")
		b, err := os.ReadFile(name)
		if err != nil {
			return "", fmt.Errorf("reading secret file: %w", err)
		}
		out := strings.TrimRight(string(b), "\r\n")
		if out == "" {
			return "", fmt.Errorf("secret file %s is empty", name)
		}
		return out, nil
	case strings.HasPrefix(v, "env:"):
		name := strings.TrimPrefix(v, "env:")
		out, ok := os.LookupEnv(name)
		if !ok || out == "" {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		return out, nil
	}
	return v, nil
}

// String describes where the secret comes from without its value.
func (s Secret) String() string {
	v := string(s)
	switch {
	case v == "":
		return "(unset)"
	case strings.HasPrefix(v, "file:"), strings.HasPrefix(v, "env:"):
		return v
	}
	return "(inline)"
}

// MarshalText keeps secrets out of any dump of the configuration.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// ShellExpr is a POSIX shell expression that yields the secret where it is
// kept — "$(cat FILE)" or "$NAME" — so that a printed command does not hold
// it; ok is false for an inline secret.
func (s Secret) ShellExpr() (expr string, ok bool) {
	v := string(s)
	switch {
	case strings.HasPrefix(v, "file:"):
		return `"$(cat '` + strings.ReplaceAll(strings.TrimPrefix(v, "file:"), "'", `'\''`) + `')"`, true
	case strings.HasPrefix(v, "env:"):
		return `"$` + strings.TrimPrefix(v, "env:") + `"`, true
	}
	return "", false
}

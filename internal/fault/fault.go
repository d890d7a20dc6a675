// Package fault owns mmgate's error kinds and their translation into protocol
// replies: SMTP codes with enhanced status codes, HTTP statuses with stable JSON
// error codes, and sysexits for the CLI. Every protocol edge turns an error into a
// reply through this package only; an error of unknown kind is temporary, so that a
// sender retries rather than loses mail.
//
// Reply texts stay generic: details belong in the log, next to the message id.
package fault

import (
	"errors"
	"fmt"
	"net/http"
)

// Kind says how a failure should be answered.
type Kind int

const (
	// Temporary failures may succeed if retried (storage, network, peer down).
	Temporary Kind = iota
	// Permanent failures never succeed when retried unchanged.
	Permanent
	// Invalid input: the request itself is malformed and can never be accepted.
	Invalid
	// Unauthorized: missing or wrong credentials.
	Unauthorized
	// TooLarge: the input exceeds a configured size limit.
	TooLarge
	// NotFound: the named object does not exist.
	NotFound
	// Conflict: the object is not in a state that allows the operation.
	Conflict
)

func (k Kind) String() string {
	switch k {
	case Temporary:
		return "temporary"
	case Permanent:
		return "permanent"
	case Invalid:
		return "invalid"
	case Unauthorized:
		return "unauthorized"
	case TooLarge:
		return "too_large"
	case NotFound:
		return "not_found"
	case Conflict:
		return "conflict"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is an error with a kind and a stable machine-readable code.
type Error struct {
	Kind Kind
	// Code is a stable snake_case identifier, e.g. "spool_unavailable".
	Code string
	// Msg is a short human sentence safe to show to a client.
	Msg string
	// Err is the underlying cause; it is logged, never shown to clients.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an error of kind k with a stable code and a client-safe message.
func New(k Kind, code, msg string) *Error { return &Error{Kind: k, Code: code, Msg: msg} }

// Wrap returns an error of kind k wrapping err.
func Wrap(k Kind, code, msg string, err error) *Error {
	return &Error{Kind: k, Code: code, Msg: msg, Err: err}
}

// KindOf returns the kind of err; an error without a kind is Temporary.
func KindOf(err error) Kind {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	return Temporary
}

// CodeOf returns the stable code of err, "internal" when it has none.
func CodeOf(err error) string {
	var fe *Error
	if errors.As(err, &fe) && fe.Code != "" {
		return fe.Code
	}
	return "internal"
}

// Is reports whether err is of kind k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }

// SMTPReply is an SMTP reply code, enhanced status code and text.
type SMTPReply struct {
	Code     int
	Enhanced [3]int
	Text     string
}

// SMTP maps err to the SMTP reply an intake should send.
func SMTP(err error) SMTPReply {
	switch KindOf(err) {
	case Permanent:
		return SMTPReply{554, [3]int{5, 0, 0}, "Message rejected"}
	case Invalid:
		return SMTPReply{550, [3]int{5, 6, 0}, "Message content rejected"}
	case Unauthorized:
		return SMTPReply{535, [3]int{5, 7, 8}, "Authentication credentials invalid"}
	case TooLarge:
		return SMTPReply{552, [3]int{5, 3, 4}, "Message too big"}
	}
	return SMTPReply{451, [3]int{4, 3, 0}, "Temporary failure storing the message, try again later"}
}

// HTTPStatus maps err to an HTTP status.
func HTTPStatus(err error) int {
	switch KindOf(err) {
	case Permanent:
		return http.StatusUnprocessableEntity
	case Invalid:
		return http.StatusBadRequest
	case Unauthorized:
		return http.StatusUnauthorized
	case TooLarge:
		return http.StatusRequestEntityTooLarge
	case NotFound:
		return http.StatusNotFound
	case Conflict:
		return http.StatusConflict
	}
	return http.StatusServiceUnavailable
}

// HTTPBody is the JSON error body every HTTP endpoint returns.
type HTTPBody struct {
	Success bool   `json:"success"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// HTTP maps err to a status and a JSON body with a stable code.
func HTTP(err error) (int, HTTPBody) {
	var fe *Error
	msg := "temporary failure, try again later"
	if errors.As(err, &fe) && fe.Msg != "" {
		msg = fe.Msg
	}
	return HTTPStatus(err), HTTPBody{Success: false, Code: CodeOf(err), Message: msg}
}

// Exit codes from sysexits.h.
const (
	ExitOK        = 0
	ExitUsage     = 64
	ExitDataErr   = 65
	ExitNoInput   = 66
	ExitSoftware  = 70
	ExitTempFail  = 75
	ExitNoPerm    = 77
	ExitConfigErr = 78
)

// Exit maps err to a sysexits code for commands such as `mmgate deliver`.
func Exit(err error) int {
	if err == nil {
		return ExitOK
	}
	switch KindOf(err) {
	case Invalid, Permanent, TooLarge:
		return ExitDataErr
	case Unauthorized:
		return ExitNoPerm
	}
	return ExitTempFail
}

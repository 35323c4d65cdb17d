package proto

import (
	"errors"
	"fmt"
)

// ErrorCode is a protocol error code. It is carried in Error messages and is
// used as the QUIC application error code when a stream or the connection is
// closed because of it.
type ErrorCode uint16

// Error codes. The values are part of the protocol: never renumber.
const (
	CodeNoError            ErrorCode = 0x0  // normal close
	CodeProtocol           ErrorCode = 0x1  // malformed message or a message out of order
	CodeVersion            ErrorCode = 0x2  // unsupported protocol version
	CodeUnknownClient      ErrorCode = 0x3  // reconnect with a client ID the server does not know
	CodeBadProof           ErrorCode = 0x4  // signature over the connection's exporter did not verify
	CodeNameTaken          ErrorCode = 0x5  // register with a name that belongs to another key
	CodeInvalidName        ErrorCode = 0x6  // a stored file name the server refuses
	CodeNotFound           ErrorCode = 0x7  // no such file or version
	CodeInternal           ErrorCode = 0x8  // the server failed; the request may be retried
	CodeNoSpace            ErrorCode = 0x9  // the server's disk is full
	CodeTooLarge           ErrorCode = 0xa  // a size or count beyond the server's limits
	CodeLimit              ErrorCode = 0xb  // too many concurrent requests, streams or connections
	CodeAborted            ErrorCode = 0xc  // the transfer was abandoned
	CodeRegistrationClosed ErrorCode = 0xd  // the server accepts no new clients
	CodeBadChunk           ErrorCode = 0xe  // a chunk that fails authentication or lies outside its transfer
	CodeShutdown           ErrorCode = 0xf  // the server is shutting down
	CodeBadKey             ErrorCode = 0x10 // the public key is unusable (type, size)
	CodeDamaged            ErrorCode = 0x11 // the stored copy does not match its checksums
	CodeUnsupported        ErrorCode = 0x12 // the server cannot do what was asked (Pace under --cc reno)
)

var codeNames = map[ErrorCode]string{
	CodeNoError:            "no error",
	CodeProtocol:           "protocol violation",
	CodeVersion:            "unsupported version",
	CodeUnknownClient:      "unknown client",
	CodeBadProof:           "bad proof of possession",
	CodeNameTaken:          "name taken",
	CodeInvalidName:        "invalid name",
	CodeNotFound:           "not found",
	CodeInternal:           "internal server error",
	CodeNoSpace:            "no space left on server",
	CodeTooLarge:           "too large",
	CodeLimit:              "limit reached",
	CodeAborted:            "aborted",
	CodeRegistrationClosed: "registration closed",
	CodeBadChunk:           "bad chunk",
	CodeShutdown:           "server shutting down",
	CodeBadKey:             "bad public key",
	CodeDamaged:            "damaged on the server",
	CodeUnsupported:        "not supported",
}

func (c ErrorCode) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("error code %#x", uint16(c))
}

// Error is an error reported by the peer in an Error message, or one that a
// local check attributes to a code. errors.Is(err, &Error{Code: c}) matches
// any *Error with code c. Its text is the peer's sentence for a person, so
// unlike this package's own errors it carries no "proto:" prefix.
type Error struct {
	Code    ErrorCode
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" || e.Message == e.Code.String() {
		return e.Code.String() // never "server shutting down: server shutting down"
	}
	return e.Code.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Errorf returns an *Error with code c and a formatted message.
func Errorf(c ErrorCode, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, or
// CodeInternal when there is none.
func CodeOf(err error) ErrorCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var pe *ParseError
	if errors.As(err, &pe) {
		return CodeProtocol
	}
	return CodeInternal
}

// ParseError is returned for every malformed message or frame. It maps to
// CodeProtocol.
type ParseError struct {
	What string // the message or field being decoded
	Err  error
}

func (e *ParseError) Error() string {
	if e.Err == nil {
		return "proto: malformed " + e.What
	}
	return "proto: malformed " + e.What + ": " + e.Err.Error()
}

func (e *ParseError) Unwrap() error { return e.Err }

// Is makes every ParseError match &Error{Code: CodeProtocol}.
func (e *ParseError) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == CodeProtocol
}

var (
	errShort    = errors.New("truncated")
	errTrailing = errors.New("trailing bytes")
	errTooLong  = errors.New("length over limit")
)

var errBadUTF8 = errors.New("invalid UTF-8")

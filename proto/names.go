package proto

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxComponentLen is the longest '/'-separated component of a stored
// name, in bytes: NAME_MAX of Linux file systems.
const MaxComponentLen = 255

// ErrInvalidName is wrapped by every error ValidateName returns.
var ErrInvalidName = errors.New("invalid name")

// ValidateName reports whether name is a valid stored name (PROTOCOL.md
// §12.1). Names are byte strings, as on Linux: any bytes but NUL, split
// on '/' into components of 1 to MaxComponentLen bytes that are neither
// "." nor "..", MaxNameLen bytes at most in all. There is no encoding,
// normalisation or case folding. The error wraps ErrInvalidName and says
// why in words a user can act on.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes long, over the %d-byte limit", ErrInvalidName, len(name), MaxNameLen)
	}
	if i := strings.IndexByte(name, 0); i >= 0 {
		return fmt.Errorf("%w: NUL byte at byte %d", ErrInvalidName, i)
	}
	for i := 1; ; i++ {
		comp, rest, more := strings.Cut(name, "/")
		switch {
		case comp == "":
			return fmt.Errorf("%w: empty component %d (leading, trailing or double '/')", ErrInvalidName, i)
		case comp == "." || comp == "..":
			return fmt.Errorf("%w: component %d is %q", ErrInvalidName, i, comp)
		case len(comp) > MaxComponentLen:
			return fmt.Errorf("%w: component %d is %d bytes long, over the %d-byte limit", ErrInvalidName, i, len(comp), MaxComponentLen)
		}
		if !more {
			break
		}
		name = rest
	}
	return nil
}

// Quote returns name as it is shown to a person: unchanged when it is
// printable UTF-8 without a backslash, which is nearly always; otherwise
// each invalid byte is written \xNN, each control or other non-printable
// character \n, \t, \xNN, \uNNNN or \UNNNNNNNN, and each backslash
// \\, so that the shown form is one line and stands for one stored name:
// Unquote gives it back.
func Quote(name string) string {
	if !needsQuote(name) {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, name[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case printable(r):
			b.WriteString(name[i : i+n])
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += n
	}
	return b.String()
}

func printable(r rune) bool { return r == ' ' || unicode.IsPrint(r) }

func needsQuote(name string) bool {
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		if (r == utf8.RuneError && n <= 1) || r == '\\' || !printable(r) {
			return true
		}
		i += n
	}
	return false
}

// Unquote reverses Quote. It fails for a string Quote cannot have made: a
// backslash not followed by one of its escapes.
func Unquote(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%q ends in a lone backslash", s)
		}
		i++
		switch c := s[i]; c {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'x', 'u', 'U':
			width := 2
			switch c {
			case 'u':
				width = 4
			case 'U':
				width = 8
			}
			if i+1+width > len(s) {
				return "", fmt.Errorf("%q: \\%c needs %d hex digits", s, c, width)
			}
			v, err := strconv.ParseUint(s[i+1:i+1+width], 16, 32)
			if err != nil {
				return "", fmt.Errorf("%q: \\%c needs %d hex digits", s, c, width)
			}
			if c == 'x' {
				b.WriteByte(byte(v))
			} else {
				b.WriteRune(rune(v))
			}
			i += width
		default:
			return "", fmt.Errorf("%q: unknown escape \\%c", s, c)
		}
	}
	return b.String(), nil
}

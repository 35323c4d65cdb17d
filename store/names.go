package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/qbackup/qbackup/proto"
)

// Limits on names.
const (
	// MaxNameLen is the maximum length in bytes of a stored file name.
	MaxNameLen = proto.MaxNameLen
	// MaxComponentLen is the maximum length in bytes of one '/'-separated
	// component of a stored file name.
	MaxComponentLen = proto.MaxComponentLen
	// MaxClientNameLen is the maximum length in bytes of a client name.
	MaxClientNameLen = 64
)

// On-disk limits. nameMax is the usual filesystem NAME_MAX. The last
// component of a version file carries a ";<version>" suffix, for which
// versionSuffixReserve bytes are kept free (';' plus up to 20 digits), so that
// whether a component is hashed never depends on the version number.
const (
	nameMax              = 255
	versionSuffixReserve = 21
)

// ValidateName reports whether name is acceptable as a stored file name:
// proto.ValidateName, whose rules are the protocol's (names are byte
// strings, as on Linux). The error wraps ErrInvalidName and names the
// reason.
func ValidateName(name string) error {
	if err := proto.ValidateName(name); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalidName, strings.TrimPrefix(err.Error(), proto.ErrInvalidName.Error()+": "))
	}
	return nil
}

// validateClientName checks a client name: 1 to MaxClientNameLen bytes of
// valid UTF-8, printable characters only (space allowed), no '/'.
func validateClientName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty client name", ErrInvalidName)
	case len(name) > MaxClientNameLen:
		return fmt.Errorf("%w: client name is %d bytes long, more than %d", ErrInvalidName, len(name), MaxClientNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: client name is not valid UTF-8", ErrInvalidName)
	}
	for i, r := range name {
		switch {
		case r == '/':
			return fmt.Errorf("%w: client name contains '/' at byte %d", ErrInvalidName, i)
		case !unicode.IsPrint(r):
			return fmt.Errorf("%w: client name contains non-printable character %U at byte %d", ErrInvalidName, r, i)
		}
	}
	return nil
}

// validatePrefix checks a List prefix: "" or a valid name. One trailing '/' is
// tolerated and removed.
func validatePrefix(prefix string) (string, error) {
	if prefix == "" {
		return "", nil
	}
	p := strings.TrimSuffix(prefix, "/")
	if err := proto.ValidateName(p); err != nil {
		return "", fmt.Errorf("%w: in the prefix, %s", ErrInvalidName, strings.TrimPrefix(err.Error(), proto.ErrInvalidName.Error()+": "))
	}
	return p, nil
}

// escapeByte reports whether byte c of a name component is written as %XX
// on disk. '%' (the escape character) and ';' (the version separator) are
// what make the mapping injective; '/' and NUL cannot occur in valid names
// and are escaped only as defence in depth; '\\' and control characters
// are escaped so that the store's own tree stays easy to read and to copy
// with any tool. Other bytes (UTF-8 or not) are kept as they are.
func escapeByte(c byte) bool {
	return c == '%' || c == ';' || c == '/' || c == '\\' || c < 0x20 || c == 0x7f
}

// escapeComponent maps one name component to a directory entry name.
//
// Each byte for which escapeByte is true becomes "%XX" (upper-case hex); all
// other bytes are kept. The escaped form therefore never contains '/' or ';',
// and every '%' in it is followed by two upper-case hex digits. If the
// escaped form is longer than limit bytes (the filesystem's NAME_MAX, minus
// room for the ";<version>" suffix on the last component), the component is
// stored as "%H" followed by the lower-case hex SHA-256 of the raw component
// (66 bytes); "%H" can never start an ordinary escaped component because 'H'
// is not a hex digit. The "."/".." forms, rejected by ValidateName anyway,
// are escaped completely so that they can never name a parent directory.
func escapeComponent(comp string, limit int) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(comp))
	for i := 0; i < len(comp); i++ {
		c := comp[i]
		if escapeByte(c) || ((comp == "." || comp == "..") && c == '.') {
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
			continue
		}
		b.WriteByte(c)
	}
	e := b.String()
	if e == "" || len(e) > limit {
		sum := sha256.Sum256([]byte(comp))
		return "%H" + hex.EncodeToString(sum[:])
	}
	return e
}

// clientDirRel is the client's directory relative to the store directory,
// slash-separated.
func clientDirRel(id ClientID) string {
	return "clients/" + id.String()
}

// versionPath returns the slash-separated path, relative to the store
// directory, of version v of the client's file name:
//
//	clients/<client id hex>/<escaped components joined by '/'>;<v>
//
// The name must be valid (ValidateName). The result is checked to lie inside
// the client's directory.
func versionPath(id ClientID, name string, v int) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if v < 1 {
		return "", fmt.Errorf("store: invalid version %d", v)
	}
	comps := strings.Split(name, "/")
	var b strings.Builder
	b.WriteString(clientDirRel(id))
	for i, c := range comps {
		b.WriteByte('/')
		if i == len(comps)-1 {
			b.WriteString(escapeComponent(c, nameMax-versionSuffixReserve))
			b.WriteByte(';')
			b.WriteString(strconv.Itoa(v))
		} else {
			b.WriteString(escapeComponent(c, nameMax))
		}
	}
	rel := b.String()
	if err := checkInClientDir(id, rel); err != nil {
		return "", err
	}
	return rel, nil
}

// checkInClientDir verifies that the slash-separated relative path rel names
// something strictly inside the client's directory: it must start with the
// client directory, have no empty, "." or ".." components, and stay inside
// the client directory according to filepath.Rel.
func checkInClientDir(id ClientID, rel string) error {
	dir := clientDirRel(id)
	rest, ok := strings.CutPrefix(rel, dir+"/")
	if !ok || rest == "" {
		return fmt.Errorf("store: path %q is outside client directory %s", rel, dir)
	}
	for _, c := range strings.Split(rest, "/") {
		if c == "" || c == "." || c == ".." || strings.ContainsRune(c, 0) {
			return fmt.Errorf("store: path %q has an unsafe component", rel)
		}
	}
	r, err := filepath.Rel(filepath.FromSlash(dir), filepath.FromSlash(rel))
	if err != nil || !filepath.IsLocal(r) {
		return fmt.Errorf("store: path %q is outside client directory %s", rel, dir)
	}
	return nil
}

// checkTempPath verifies that rel is a temp file path as NewUpload makes it:
// "tmp/<32 hex digits>.part".
func checkTempPath(rel string) error {
	base, ok := strings.CutPrefix(rel, "tmp/")
	if ok {
		if h, ok := strings.CutSuffix(base, ".part"); ok && len(h) == 32 {
			if _, err := hex.DecodeString(h); err == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("store: bad temp path %q", rel)
}

// tempPath is the temp file of an upload, relative to the store directory.
func tempPath(uploadID [16]byte) string {
	return "tmp/" + hex.EncodeToString(uploadID[:]) + ".part"
}

package proto

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// All integers on the wire are big-endian. Strings and byte fields are
// preceded by a uint16 length.

func appendU8(b []byte, v uint8) []byte   { return append(b, v) }
func appendU16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func appendU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func appendU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

func appendBytes16(b, v []byte) []byte {
	b = appendU16(b, uint16(len(v)))
	return append(b, v...)
}

func appendString16(b []byte, s string) []byte {
	b = appendU16(b, uint16(len(s)))
	return append(b, s...)
}

// decoder reads fields from a message payload. The first failure sticks:
// later reads return zero values, and err reports the first problem.
type decoder struct {
	b    []byte
	what string
	err  error
}

func (d *decoder) fail(err error, field string) {
	if d.err == nil {
		d.err = &ParseError{What: d.what + "." + field, Err: err}
	}
}

func (d *decoder) take(n int, field string) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail(errShort, field)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8(field string) uint8 {
	if v := d.take(1, field); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16(field string) uint16 {
	if v := d.take(2, field); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32(field string) uint32 {
	if v := d.take(4, field); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64(field string) uint64 {
	if v := d.take(8, field); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) fixed(dst []byte, field string) {
	if v := d.take(len(dst), field); v != nil {
		copy(dst, v)
	}
}

// field16 reads a uint16-length-prefixed field of at most max bytes. The
// result is part of the frame buffer.
func (d *decoder) field16(max int, field string) []byte {
	n := int(d.u16(field))
	if d.err != nil {
		return nil
	}
	if n > max {
		d.fail(errTooLong, field)
		return nil
	}
	return d.take(n, field)
}

// bytes16 reads a uint16-length-prefixed field of at most max bytes and
// returns a copy, so the message does not pin the frame buffer.
func (d *decoder) bytes16(max int, field string) []byte {
	v := d.field16(max, field)
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// string16 reads a uint16-length-prefixed UTF-8 string of at most max bytes.
func (d *decoder) string16(max int, field string) string {
	v := d.field16(max, field)
	if d.err != nil {
		return ""
	}
	if !utf8.Valid(v) {
		d.fail(errBadUTF8, field)
		return ""
	}
	return string(v)
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = &ParseError{What: d.what, Err: errTrailing}
	}
	return d.err
}

// name16 reads a uint16-length-prefixed name of at most MaxNameLen
// bytes. Names are byte strings (§12.1): the decoder checks only the
// length; whether a name is valid is the receiver's question
// (ValidateName), answered per request rather than for the connection.
func (d *decoder) name16(field string) string {
	v := d.field16(MaxNameLen, field)
	if d.err != nil {
		return ""
	}
	return string(v)
}

// mode reads a mode field: permission, setuid, setgid and sticky bits.
func (d *decoder) mode() uint32 {
	m := d.u32("mode")
	if d.err == nil && m&^ModeMask != 0 {
		d.fail(fmt.Errorf("%#o has bits beyond %#o", m, ModeMask), "mode")
	}
	return m
}

// kind reads an entry kind.
func (d *decoder) kind() Kind {
	k := Kind(d.u8("kind"))
	if d.err == nil && k > maxKind {
		d.fail(fmt.Errorf("unknown kind %d", k), "kind")
	}
	return k
}

// checkSize checks an entry's size against the protocol's bounds for its
// kind.
func (d *decoder) checkSize(k Kind, size uint64) {
	switch {
	case d.err != nil:
	case size > MaxFileSize:
		d.fail(errTooLong, "size")
	case k == KindSymlink && (size == 0 || size > MaxSymlinkLen):
		d.fail(fmt.Errorf("symbolic link target of %d bytes, not 1 to %d", size, MaxSymlinkLen), "size")
	case !k.HasContent() && size != 0:
		d.fail(fmt.Errorf("%v of %d bytes: only files and symbolic links have content", k, size), "size")
	}
}

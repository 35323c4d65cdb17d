package proto

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Kind is the type of a stored entry (PROTOCOL.md §5.6).
type Kind uint8

// Entry kinds. A file's content is its bytes and a symbolic link's is its
// target; the other kinds have no content (size 0), only metadata.
const (
	KindFile    Kind = 0
	KindDir     Kind = 1
	KindSymlink Kind = 2
	KindFIFO    Kind = 3
	KindSocket  Kind = 4
	KindCharDev Kind = 5
	KindBlock   Kind = 6
	maxKind          = KindBlock
)

var kindNames = [...]string{"file", "directory", "symbolic link", "named pipe", "socket", "character device", "block device"}

func (k Kind) String() string {
	if k <= maxKind {
		return kindNames[k]
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// HasContent reports whether entries of kind k carry bytes: files and
// symbolic links. Entries of other kinds have size 0.
func (k Kind) HasContent() bool { return k == KindFile || k == KindSymlink }

// Mode bits carried in the mode field: the permission bits and setuid,
// setgid and sticky, as POSIX numbers them.
const (
	ModeSetuid = 0o4000
	ModeSetgid = 0o2000
	ModeSticky = 0o1000
	ModeMask   = 0o7777
)

// Limits of the metadata record.
const (
	// MaxMetaLen is the longest metadata record a message carries: what
	// fits in one control frame beside a name of MaxNameLen bytes and the
	// fixed fields, rounded down.
	MaxMetaLen = 56 << 10
	// MaxSymlinkLen is the longest symbolic link target (PATH_MAX - 1).
	MaxSymlinkLen = 4095
	// MaxOwnerNameLen is the longest user or group name recorded.
	MaxOwnerNameLen = 255
	// MaxXattrNameLen is the longest extended attribute name (XATTR_NAME_MAX).
	MaxXattrNameLen = 255
)

// Meta is what a backup records of an entry besides its name, kind, size,
// modification time, mode and content. It travels as an opaque record that
// the server stores and gives back unchanged (PROTOCOL.md §5.6a): only
// clients interpret it.
type Meta struct {
	// Owner and group by number, and by name when the system knew one.
	HasOwner    bool
	UID, GID    uint32
	User, Group string
	// Xattrs are the extended attributes, sorted by name; POSIX ACLs are
	// the attributes system.posix_acl_access and system.posix_acl_default.
	Xattrs []Xattr
	// Rdev is the device number of a character or block device.
	Rdev uint64
	// Dev and Inode identify a file with more than one hard link: files
	// restored together with the same pair and content are linked again.
	// Both 0 for a file with one link.
	Dev, Inode uint64
	// Holes are the ranges of a sparse file that have no data: a restore
	// leaves them unallocated. Ascending, not touching, not empty.
	Holes []Range
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Tags of the metadata record's fields.
const (
	metaOwner = 0x01 // uid u32, gid u32, user u8-length bytes, group u8-length bytes
	metaXattr = 0x02 // name u8-length bytes, value: the rest (repeated, ascending by name)
	metaRdev  = 0x03 // u64
	metaLink  = 0x04 // dev u64, inode u64
	metaHoles = 0x05 // n × (offset u64, length u64)
)

// AppendMeta appends m's record: fields as tag (u8), length (u16), value,
// in ascending tag order, absent fields left out, so that equal metadata
// has equal records. Xattrs must be sorted (SortXattrs) and each fit in a
// field; the caller keeps the whole within MaxMetaLen.
func AppendMeta(b []byte, m *Meta) []byte {
	field := func(b []byte, tag byte, value []byte) []byte {
		b = append(b, tag)
		return appendBytes16(b, value)
	}
	ownerName := func(v []byte, s string) []byte {
		if len(s) > MaxOwnerNameLen {
			s = "" // not a name any system gives; the number says it
		}
		return append(appendU8(v, uint8(len(s))), s...)
	}
	var v []byte
	if m.HasOwner {
		v = appendU32(v[:0], m.UID)
		v = appendU32(v, m.GID)
		v = ownerName(v, m.User)
		v = ownerName(v, m.Group)
		b = field(b, metaOwner, v)
	}
	for _, x := range m.Xattrs {
		if checkXattrName(x.Name) != nil {
			continue // no system has such a name; ParseMeta would refuse it
		}
		v = append(appendU8(v[:0], uint8(len(x.Name))), x.Name...)
		v = append(v, x.Value...)
		b = field(b, metaXattr, v)
	}
	if m.Rdev != 0 {
		b = field(b, metaRdev, appendU64(v[:0], m.Rdev))
	}
	if m.Dev != 0 || m.Inode != 0 {
		b = field(b, metaLink, appendU64(appendU64(v[:0], m.Dev), m.Inode))
	}
	if len(m.Holes) > 0 {
		v = v[:0]
		for _, r := range m.Holes {
			v = appendU64(appendU64(v, r.Off), r.Len)
		}
		b = field(b, metaHoles, v)
	}
	return b
}

// ParseMeta decodes a metadata record. A field of an unknown tag is passed
// over (a later client may add some); a known one that is malformed,
// repeated (but for xattrs) or out of order fails with a *ParseError.
func ParseMeta(b []byte) (*Meta, error) {
	if len(b) > MaxMetaLen {
		return nil, &ParseError{What: "metadata", Err: errTooLong}
	}
	m := &Meta{}
	d := decoder{b: b, what: "metadata"}
	last := byte(0)
	for d.err == nil && len(d.b) > 0 {
		tag := d.u8("tag")
		v := d.field16(MaxMetaLen, "length")
		if d.err != nil {
			break
		}
		if tag < last || (tag == last && tag != metaXattr) {
			d.fail(fmt.Errorf("field %#x after field %#x", tag, last), "tag")
			break
		}
		last = tag
		f := decoder{b: v, what: fmt.Sprintf("metadata field %#x", tag)}
		switch tag {
		case metaOwner:
			m.HasOwner = true
			m.UID = f.u32("uid")
			m.GID = f.u32("gid")
			m.User = string(f.take(int(f.u8("user")), "user"))
			m.Group = string(f.take(int(f.u8("group")), "group"))
		case metaXattr:
			var x Xattr
			x.Name = string(f.take(int(f.u8("name")), "name"))
			x.Value = append([]byte{}, f.take(len(f.b), "value")...)
			if f.err == nil {
				if err := checkXattrName(x.Name); err != nil {
					f.fail(err, "name")
				} else if n := len(m.Xattrs); n > 0 && m.Xattrs[n-1].Name >= x.Name {
					f.fail(fmt.Errorf("%q after %q: not ascending", x.Name, m.Xattrs[n-1].Name), "name")
				}
			}
			m.Xattrs = append(m.Xattrs, x)
		case metaRdev:
			m.Rdev = f.u64("rdev")
			if f.err == nil && m.Rdev == 0 {
				f.fail(errors.New("0 is left out, not sent"), "rdev")
			}
		case metaLink:
			m.Dev = f.u64("dev")
			m.Inode = f.u64("inode")
			if f.err == nil && m.Dev == 0 && m.Inode == 0 {
				f.fail(errors.New("0, 0 is left out, not sent"), "inode")
			}
		case metaHoles:
			if len(f.b)%16 != 0 || len(f.b) == 0 {
				f.fail(errors.New("not a whole, non-zero number of ranges"), "holes")
				break
			}
			var end uint64
			for len(f.b) > 0 && f.err == nil {
				off, n := f.u64("offset"), f.u64("length")
				if n == 0 || off < end || (off == end && len(m.Holes) > 0) || off > MaxFileSize || n > MaxFileSize-off {
					f.fail(fmt.Errorf("hole [%d,+%d) empty, overlapping, touching, unordered or out of bounds", off, n), "holes")
					break
				}
				end = off + n
				m.Holes = append(m.Holes, Range{Off: off, Len: n})
			}
		default:
			continue // unknown: a later client's field
		}
		if f.err == nil && len(f.b) != 0 {
			f.err = &ParseError{What: f.what, Err: errTrailing}
		}
		if f.err != nil {
			return nil, f.err
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

// checkXattrName checks an extended attribute name: 1 to MaxXattrNameLen
// bytes, no NUL, in a namespace ("user.", "trusted.", "security.",
// "system.").
func checkXattrName(name string) error {
	switch {
	case name == "" || len(name) > MaxXattrNameLen:
		return fmt.Errorf("%d bytes long, not 1 to %d", len(name), MaxXattrNameLen)
	case strings.IndexByte(name, 0) >= 0:
		return errors.New("holds a NUL byte")
	case !strings.Contains(name, "."):
		return errors.New("has no namespace")
	}
	return nil
}

// Equal reports whether m and o record the same metadata.
func (m *Meta) Equal(o *Meta) bool {
	return bytes.Equal(AppendMeta(nil, m), AppendMeta(nil, o))
}

// SortXattrs puts m's extended attributes in the order the record needs.
func (m *Meta) SortXattrs() {
	slices.SortFunc(m.Xattrs, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
}

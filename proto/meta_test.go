package proto_test

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

func metaCases() []proto.Meta {
	return []proto.Meta{
		{},
		{HasOwner: true},
		{HasOwner: true, UID: 1000, GID: 100, User: "alice", Group: "users"},
		{HasOwner: true, UID: 4294967295, GID: 4294967295, User: strings.Repeat("u", proto.MaxOwnerNameLen), Group: "g\xe9"},
		{Xattrs: []proto.Xattr{{Name: "security.selinux", Value: []byte("system_u:object_r:user_home_t:s0\x00")},
			{Name: "system.posix_acl_access", Value: []byte{2, 0, 0, 0, 1, 0, 6, 0}}, {Name: "user.empty", Value: []byte{}}}},
		{Rdev: 0x0801},
		{Dev: 66306, Inode: 1234567},
		{Inode: 1},
		{Holes: []proto.Range{{Off: 0, Len: 4096}, {Off: 1 << 20, Len: 100 << 20}}},
		{HasOwner: true, UID: 0, GID: 0, User: "root", Group: "root", Xattrs: []proto.Xattr{{Name: "user.a", Value: []byte("1")}},
			Rdev: 1, Dev: 2, Inode: 3, Holes: []proto.Range{{Off: 8192, Len: 4096}}},
	}
}

func TestMetaRoundTrip(t *testing.T) {
	for i, m := range metaCases() {
		b := proto.AppendMeta(nil, &m)
		got, err := proto.ParseMeta(b)
		if err != nil {
			t.Fatalf("case %d: ParseMeta(AppendMeta(%+v)) = %v", i, m, err)
		}
		for j := range got.Xattrs { // ParseMeta returns a non-nil empty value
			if len(m.Xattrs[j].Value) == 0 {
				got.Xattrs[j].Value = m.Xattrs[j].Value
			}
		}
		if !reflect.DeepEqual(*got, m) {
			t.Errorf("case %d: round trip = %+v, want %+v", i, *got, m)
		}
		if !got.Equal(&m) {
			t.Errorf("case %d: Equal = false after a round trip", i)
		}
		if len(b) == 0 != reflect.DeepEqual(m, proto.Meta{}) {
			t.Errorf("case %d: %d-byte record; only empty metadata has an empty record", i, len(b))
		}
	}
}

// TestMetaLayout builds records by hand, so that encoder and decoder
// cannot agree on a wrong layout.
func TestMetaLayout(t *testing.T) {
	m := proto.Meta{HasOwner: true, UID: 1000, GID: 100, User: "al", Group: "g",
		Xattrs: []proto.Xattr{{Name: "user.x", Value: []byte("v")}}, Rdev: 5, Dev: 1, Inode: 2,
		Holes: []proto.Range{{Off: 0, Len: 16}}}
	want := new(wire).
		u8(0x01).u16(13).u32(1000).u32(100).u8(2).raw([]byte("al")).u8(1).raw([]byte("g")).
		u8(0x02).u16(8).u8(6).raw([]byte("user.xv")).
		u8(0x03).u16(8).u64(5).
		u8(0x04).u16(16).u64(1).u64(2).
		u8(0x05).u16(16).u64(0).u64(16).b
	if got := proto.AppendMeta(nil, &m); !bytes.Equal(got, want) {
		t.Errorf("AppendMeta = %x\nwant          %x", got, want)
	}
}

func TestParseMetaRejects(t *testing.T) {
	owner := func() *wire { return new(wire).u8(0x01).u16(10).u32(1).u32(2).u8(0).u8(0) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"truncated tag", []byte{0x01}},
		{"truncated length", []byte{0x01, 0x00}},
		{"length beyond", new(wire).u8(0x01).u16(20).u32(1).b},
		{"owner short", new(wire).u8(0x01).u16(4).u32(1).b},
		{"owner trailing", new(wire).u8(0x01).u16(11).u32(1).u32(2).u8(0).u8(0).u8(9).b},
		{"owner name beyond", new(wire).u8(0x01).u16(10).u32(1).u32(2).u8(5).u8(0).b},
		{"owner twice", append(owner().b, owner().b...)},
		{"out of order", append(new(wire).u8(0x03).u16(8).u64(1).b, owner().b...)},
		{"xattr no namespace", new(wire).u8(0x02).u16(2).u8(1).raw([]byte("x")).b},
		{"xattr empty name", new(wire).u8(0x02).u16(1).u8(0).b},
		{"xattr NUL", new(wire).u8(0x02).u16(4).u8(3).raw([]byte("a.\x00")).b},
		{"xattrs unordered", new(wire).u8(0x02).u16(4).u8(3).raw([]byte("u.b")).u8(0x02).u16(4).u8(3).raw([]byte("u.a")).b},
		{"xattrs duplicate", new(wire).u8(0x02).u16(4).u8(3).raw([]byte("u.a")).u8(0x02).u16(4).u8(3).raw([]byte("u.a")).b},
		{"rdev zero", new(wire).u8(0x03).u16(8).u64(0).b},
		{"rdev short", new(wire).u8(0x03).u16(4).u32(0).b},
		{"link zero", new(wire).u8(0x04).u16(16).u64(0).u64(0).b},
		{"holes none", new(wire).u8(0x05).u16(0).b},
		{"holes partial", new(wire).u8(0x05).u16(8).u64(0).b},
		{"hole empty", new(wire).u8(0x05).u16(16).u64(0).u64(0).b},
		{"holes touching", new(wire).u8(0x05).u16(32).u64(0).u64(5).u64(5).u64(5).b},
		{"holes overlapping", new(wire).u8(0x05).u16(32).u64(0).u64(5).u64(4).u64(5).b},
		{"hole beyond", new(wire).u8(0x05).u16(16).u64(proto.MaxFileSize).u64(1).b},
		{"too long", make([]byte, proto.MaxMetaLen+1)},
	}
	for _, tt := range tests {
		if m, err := proto.ParseMeta(tt.b); err == nil || !isParseError(err) {
			t.Errorf("%s: ParseMeta(%x) = %+v, %v; want a *ParseError", tt.name, tt.b, m, err)
		}
	}
	// A field of a tag this version does not know is passed over.
	b := append(owner().b, new(wire).u8(0x7f).u16(3).raw([]byte("new")).b...)
	if m, err := proto.ParseMeta(b); err != nil || !m.HasOwner || m.UID != 1 {
		t.Errorf("ParseMeta with an unknown field = %+v, %v; want the owner and no error", m, err)
	}
}

// FuzzMeta checks that ParseMeta never panics, fails only with a
// *ParseError, and that what it accepts encodes to a record that parses
// to the same metadata.
func FuzzMeta(f *testing.F) {
	for _, m := range metaCases() {
		f.Add(proto.AppendMeta(nil, &m))
	}
	f.Add([]byte{0x7f, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := proto.ParseMeta(b)
		if err != nil {
			if !isParseError(err) {
				t.Errorf("ParseMeta(%x) error = %v (%T), want *proto.ParseError", b, err, err)
			}
			return
		}
		enc := proto.AppendMeta(nil, m)
		m2, err := proto.ParseMeta(enc)
		if err != nil {
			t.Fatalf("ParseMeta(AppendMeta(%+v)) = %v", m, err)
		}
		if !m2.Equal(m) || !bytes.Equal(proto.AppendMeta(nil, m2), enc) {
			t.Errorf("parse → append → parse = %+v, want %+v", m2, m)
		}
	})
}

// TestUploadRequestLayout builds a version 2 UploadRequest by hand.
func TestUploadRequestLayout(t *testing.T) {
	m := &proto.UploadRequest{Req: 7, Name: "a\xe9", Size: 3, ModTime: -1, Mode: 0o4755, Flags: proto.FlagHashed,
		CRC: 9, SHA256: [32]byte{31: 1}, Kind: proto.KindSymlink, Meta: []byte{1, 2}}
	want := new(wire).u32(7).str("a\xe9").u64(3).u64(^uint64(0)).u32(0o4755).u8(1).u32(9).raw(append(make([]byte, 31), 1)).
		u8(2).u16(2).raw([]byte{1, 2}).b
	if got := payloadOf(m); !bytes.Equal(got, want) {
		t.Errorf("UploadRequest payload = %x\nwant                     %x", got, want)
	}
}

// TestVectorUploadRequest checks the UploadRequest vector of PROTOCOL.md
// §14, written there by hand.
func TestVectorUploadRequest(t *testing.T) {
	const want = "10" + "00000056" + "00000001" + "0004" + "636166e9" + "0000000000000000" + "0000000000000001" +
		"000001ed" + "00" + "00000000" + "0000000000000000000000000000000000000000000000000000000000000000" +
		"01" + "0010" + "01" + "000d" + "000003e8" + "00000064" + "02" + "616c" + "01" + "67"
	meta := proto.AppendMeta(nil, &proto.Meta{HasOwner: true, UID: 1000, GID: 100, User: "al", Group: "g"})
	got := proto.AppendMessage(nil, &proto.UploadRequest{Req: 1, Name: "caf\xe9", ModTime: 1, Mode: 0o755, Kind: proto.KindDir, Meta: meta})
	if fmt.Sprintf("%x", got) != want {
		t.Errorf("UploadRequest vector = %x\nwant                    %s", got, want)
	}
}

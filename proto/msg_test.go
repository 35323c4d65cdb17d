package proto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/qbackup/qbackup/proto"
)

// headerLen is the size of a control frame header: type (1) + length (4).
const headerLen = 5

// allTypes lists every control message type.
var allTypes = []proto.MsgType{
	proto.TypeRegister,
	proto.TypeReconnect,
	proto.TypePace,
	proto.TypePaced,
	proto.TypeUploadRequest,
	proto.TypeUploadCommit,
	proto.TypeUploadAbort,
	proto.TypeUploadJoin,
	proto.TypeListRequest,
	proto.TypeRestoreRequest,
	proto.TypeRestoreDone,
	proto.TypeRestoreResume,
	proto.TypeWelcome,
	proto.TypeError,
	proto.TypeUploadReady,
	proto.TypeUploadChecksum,
	proto.TypeUploadResult,
	proto.TypeListEntry,
	proto.TypeListEnd,
	proto.TypeRestoreReady,
}

func isKnownType(t proto.MsgType) bool {
	for _, k := range allTypes {
		if k == t {
			return true
		}
	}
	return false
}

// pattern returns n deterministic, non-constant bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

func id16(seed byte) (id [16]byte) {
	copy(id[:], pattern(16, seed))
	return id
}

func sum32(seed byte) (s [32]byte) {
	copy(s[:], pattern(32, seed))
	return s
}

func allOnes16() (id [16]byte) {
	for i := range id {
		id[i] = 0xff
	}
	return id
}

func allOnes32() (s [32]byte) {
	for i := range s {
		s[i] = 0xff
	}
	return s
}

// maxFittingRanges is the largest number of ranges an UploadReady can carry:
// at most MaxRanges, and few enough that the payload (31 fixed bytes + 16 per
// range) stays within MaxControlFrame. See TestUploadReadyMaxRanges.
const maxFittingRanges = min(proto.MaxRanges, (proto.MaxControlFrame-31)/16)

// ranges returns n disjoint, non-adjacent ranges.
func ranges(n int) []proto.Range {
	r := make([]proto.Range, n)
	for i := range r {
		r[i] = proto.Range{Off: uint64(i) * 1000, Len: 999}
	}
	return r
}

type msgCase struct {
	name string
	m    proto.Message
}

// messageCases returns representative values of every message type: typical
// ones, maximum lengths and values, and empty fields. Empty []byte fields are
// nil because that is how the decoder returns them.
func messageCases() []msgCase {
	mtime := time.Date(2024, 2, 29, 13, 14, 15, 123456789, time.UTC).UnixNano()
	maxName := strings.Repeat("n", proto.MaxNameLen)
	// 4095 bytes of three-byte runes, then one ASCII byte: MaxNameLen exactly.
	maxNameUTF8 := strings.Repeat("日", proto.MaxNameLen/3) + "x"
	return []msgCase{
		{"Register/typical", &proto.Register{Version: proto.Version, Name: "laptop", PublicKey: pattern(294, 1), Signature: pattern(256, 2)}},
		{"Register/max", &proto.Register{Version: math.MaxUint16, Name: strings.Repeat("c", proto.MaxClientNameLen), PublicKey: pattern(proto.MaxPublicKeyLen, 3), Signature: pattern(proto.MaxSignatureLen, 4), Invite: strings.Repeat("i", proto.MaxInviteLen)}},
		{"Register/invite", &proto.Register{Version: proto.Version, Name: "laptop", PublicKey: pattern(294, 1), Signature: pattern(256, 2), Invite: "qbi1-abcdefghijklmnopqrstuvwxyz234567"}},
		{"Register/maxUTF8", &proto.Register{Version: 1, Name: strings.Repeat("é", proto.MaxClientNameLen/2), PublicKey: pattern(1, 5), Signature: pattern(1, 6)}},
		{"Register/empty", &proto.Register{Name: "a"}},

		{"Reconnect/typical", &proto.Reconnect{Version: proto.Version, ClientID: id16(7), Signature: pattern(384, 8)}},
		{"Reconnect/max", &proto.Reconnect{Version: math.MaxUint16, ClientID: allOnes16(), Signature: pattern(proto.MaxSignatureLen, 9)}},
		{"Reconnect/zero", &proto.Reconnect{}},

		{"Pace/typical", &proto.Pace{Req: 3, Rate: 2_500_000}},
		{"Pace/none", &proto.Pace{Req: 1}},
		{"Pace/min", &proto.Pace{Req: 1, Rate: proto.MinPace}},
		{"Pace/max", &proto.Pace{Req: math.MaxUint32, Rate: math.MaxUint64}},
		{"Paced/typical", &proto.Paced{Req: 3, Rate: 2_500_000}},
		{"Paced/zero", &proto.Paced{}},

		{"Welcome/typical", &proto.Welcome{ClientID: id16(10), WrappedKey: pattern(256, 11), ChunkSize: 1 << 20, Streams: 8}},
		{"Welcome/max", &proto.Welcome{ClientID: allOnes16(), WrappedKey: pattern(proto.MaxWrappedKeyLen, 12), ChunkSize: proto.MaxChunkSize, Streams: math.MaxUint16}},
		{"Welcome/min", &proto.Welcome{ChunkSize: 1}},

		{"Error/typical", &proto.ErrorMessage{Req: 7, Code: proto.CodeNotFound, Message: "no such file: a/b"}},
		{"Error/max", &proto.ErrorMessage{Req: math.MaxUint32, Code: math.MaxUint16, Message: strings.Repeat("m", proto.MaxMessageLen)}},
		{"Error/maxUTF8", &proto.ErrorMessage{Req: 1, Code: proto.CodeInternal, Message: strings.Repeat("€", proto.MaxMessageLen/3)}},
		{"Error/zero", &proto.ErrorMessage{}},

		{"UploadRequest/typical", &proto.UploadRequest{Req: 1, Name: "home/me/notes.txt", Size: 12345, ModTime: mtime, Mode: 0o644, Flags: proto.FlagHashed, CRC: 0xdeadbeef, SHA256: sum32(13)}},
		{"UploadRequest/max", &proto.UploadRequest{Req: math.MaxUint32, Name: maxName, Size: proto.MaxFileSize, ModTime: math.MaxInt64, Mode: proto.ModeMask, Flags: math.MaxUint8, CRC: math.MaxUint32, SHA256: allOnes32(), Meta: pattern(proto.MaxMetaLen, 20)}},
		{"UploadRequest/maxUTF8", &proto.UploadRequest{Req: 2, Name: maxNameUTF8, Size: 1, ModTime: 1}},
		{"UploadRequest/min", &proto.UploadRequest{Name: "a", ModTime: math.MinInt64}},
		// Names are bytes: Latin-1, control characters, backslashes.
		{"UploadRequest/bytes", &proto.UploadRequest{Req: 3, Name: "caf\xe9/a\\b\nc\x01", Size: 4, Mode: 0o4755}},
		{"UploadRequest/dir", &proto.UploadRequest{Req: 4, Name: "docs", Kind: proto.KindDir, Mode: 0o1777, Meta: []byte{1, 0, 2, 0xaa, 0xbb}}},
		{"UploadRequest/symlink", &proto.UploadRequest{Req: 5, Name: "link", Kind: proto.KindSymlink, Size: proto.MaxSymlinkLen, Mode: 0o777}},
		{"UploadRequest/device", &proto.UploadRequest{Req: 6, Name: "dev/null", Kind: proto.KindBlock, Mode: 0o666}},

		{"UploadCommit/zero", &proto.UploadCommit{}},
		{"UploadCommit/max", &proto.UploadCommit{Xfer: math.MaxUint32}},
		{"UploadAbort/zero", &proto.UploadAbort{}},
		{"UploadAbort/max", &proto.UploadAbort{Xfer: math.MaxUint32}},
		{"UploadJoin/zero", &proto.UploadJoin{}},
		{"UploadJoin/typical", &proto.UploadJoin{Req: 7, UploadID: [16]byte{1, 2, 3, 15: 0xff}}},
		{"UploadReady/joined", &proto.UploadReady{Req: 8, Xfer: 9, UploadID: [16]byte{1}, Status: proto.ReadyJoined, Missing: []proto.Range{{Off: 0, Len: 10}}}},

		{"ListRequest/all", &proto.ListRequest{}},
		{"ListRequest/typical", &proto.ListRequest{Req: 3, Prefix: "home/", Flags: proto.ListAllVersions}},
		{"ListRequest/max", &proto.ListRequest{Req: math.MaxUint32, Prefix: maxName, Flags: math.MaxUint8}},

		{"RestoreRequest/typical", &proto.RestoreRequest{Req: 4, Name: "a/b", Version: 0}},
		{"RestoreRequest/max", &proto.RestoreRequest{Req: math.MaxUint32, Name: maxNameUTF8, Version: math.MaxUint32}},

		{"RestoreDone/zero", &proto.RestoreDone{}},
		{"RestoreDone/failed", &proto.RestoreDone{Xfer: math.MaxUint32, Status: proto.DoneFailed}},
		{"RestoreDone/max", &proto.RestoreDone{Xfer: math.MaxUint32, Status: proto.DoneMismatch}},

		{"RestoreResume/none", &proto.RestoreResume{Req: 5, Name: "a/b", Version: 2, SHA256: [32]byte{1, 31: 2}}},
		{"RestoreResume/typical", &proto.RestoreResume{Req: 5, Name: "a/b", Version: 2, SHA256: [32]byte{1, 31: 2},
			Have: []proto.Range{{Off: 0, Len: 3 << 20}, {Off: 4 << 20, Len: 1 << 20}}}},
		{"RestoreResume/max", &proto.RestoreResume{Req: math.MaxUint32, Name: maxNameUTF8, Version: math.MaxUint32,
			Have: manyRanges(proto.MaxResumeRanges)}},

		{"UploadReady/send", &proto.UploadReady{Req: 1, Xfer: 2, UploadID: id16(14), Status: proto.ReadySend, Missing: []proto.Range{{Off: 0, Len: 100}, {Off: 200, Len: 50}}}},
		// UploadReady with no ranges (ReadyUnchanged) is in
		// TestUploadReadyNoRangesRoundTrip: it exposes a nil/empty bug.
		{"UploadReady/firstByte", &proto.UploadReady{Req: 5, Xfer: 6, UploadID: id16(15), Status: proto.ReadySend, Version: 3, Missing: []proto.Range{{Off: 0, Len: 1}}}},
		{"UploadReady/adjacent", &proto.UploadReady{Missing: []proto.Range{{Off: 0, Len: 5}, {Off: 5, Len: 5}}}},
		{"UploadReady/whole", &proto.UploadReady{Missing: []proto.Range{{Off: 0, Len: proto.MaxFileSize}}}},
		{"UploadReady/lastByte", &proto.UploadReady{Missing: []proto.Range{{Off: 7, Len: 1}, {Off: proto.MaxFileSize - 1, Len: 1}}}},
		{"UploadReady/max", &proto.UploadReady{Req: math.MaxUint32, Xfer: math.MaxUint32, UploadID: allOnes16(), Status: proto.ReadyUnchanged, Version: math.MaxUint32, Missing: ranges(maxFittingRanges)}},

		{"UploadChecksum/typical", &proto.UploadChecksum{Xfer: 2, CRC: 0x12345678, SHA256: sum32(16)}},
		{"UploadChecksum/max", &proto.UploadChecksum{Xfer: math.MaxUint32, CRC: math.MaxUint32, SHA256: allOnes32()}},
		{"UploadChecksum/zero", &proto.UploadChecksum{}},

		{"UploadResult/stored", &proto.UploadResult{Xfer: 2, Status: proto.ResultStored, Version: 4, StoredAt: mtime}},
		{"UploadResult/discarded", &proto.UploadResult{Xfer: 3, Status: proto.ResultDiscarded}},
		{"UploadResult/max", &proto.UploadResult{Xfer: math.MaxUint32, Status: proto.ResultDiscarded, Version: math.MaxUint32, StoredAt: math.MinInt64}},

		{"ListEntry/typical", &proto.ListEntry{Req: 3, Name: "home/me/notes.txt", Version: 2, Versions: 5, Size: 12345, ModTime: mtime, Mode: 0o600, CRC: 0xcafef00d, SHA256: sum32(17), StoredAt: mtime + 1, Verified: true}},
		{"ListEntry/max", &proto.ListEntry{Req: math.MaxUint32, Name: maxName, Version: math.MaxUint32, Versions: math.MaxUint32, Size: proto.MaxFileSize, ModTime: math.MinInt64, Mode: proto.ModeMask, CRC: math.MaxUint32, SHA256: allOnes32(), StoredAt: math.MaxInt64, Verified: true, Damaged: true, Meta: pattern(proto.MaxMetaLen, 21)}},
		{"ListEntry/zero", &proto.ListEntry{}},
		{"ListEntry/damaged", &proto.ListEntry{Req: 3, Name: "x\xff", Version: 1, Versions: 1, Size: 1, Damaged: true}},
		{"ListEntry/fifo", &proto.ListEntry{Req: 3, Name: "pipe", Version: 1, Versions: 1, Kind: proto.KindFIFO, Mode: 0o600, Verified: true}},

		{"ListEnd/zero", &proto.ListEnd{}},
		{"ListEnd/max", &proto.ListEnd{Req: math.MaxUint32, Count: math.MaxUint32}},

		{"RestoreReady/typical", &proto.RestoreReady{Req: 8, Xfer: 9, TransferID: id16(18), Name: "a/b", Version: 2, Size: 1 << 30, ModTime: mtime, Mode: 0o755, CRC: 1, SHA256: sum32(19)}},
		{"RestoreReady/max", &proto.RestoreReady{Req: math.MaxUint32, Xfer: math.MaxUint32, TransferID: allOnes16(), Name: maxName, Version: math.MaxUint32, Size: proto.MaxFileSize, ModTime: math.MaxInt64, Mode: proto.ModeMask, CRC: math.MaxUint32, SHA256: allOnes32(), Meta: pattern(proto.MaxMetaLen, 22)}},
		{"RestoreReady/zero", &proto.RestoreReady{}},
		{"RestoreReady/symlink", &proto.RestoreReady{Req: 8, Xfer: 9, Name: "a/\xe9", Version: 1, Size: 7, Kind: proto.KindSymlink, Mode: 0o777, Meta: []byte{1, 0, 0}}},
	}
}

// encode returns m's control frame.
func encode(m proto.Message) []byte { return proto.AppendMessage(nil, m) }

// payloadOf returns m's payload, without the frame header.
func payloadOf(m proto.Message) []byte { return encode(m)[headerLen:] }

// rawFrame builds a frame from a type and a payload.
func rawFrame(t proto.MsgType, payload []byte) []byte {
	b := append([]byte{byte(t)}, binary.BigEndian.AppendUint32(nil, uint32(len(payload)))...)
	return append(b, payload...)
}

// wire builds payloads field by field, for encodings AppendMessage cannot
// produce.
type wire struct{ b []byte }

func (w *wire) u8(v uint8) *wire   { w.b = append(w.b, v); return w }
func (w *wire) u16(v uint16) *wire { w.b = binary.BigEndian.AppendUint16(w.b, v); return w }
func (w *wire) u32(v uint32) *wire { w.b = binary.BigEndian.AppendUint32(w.b, v); return w }
func (w *wire) u64(v uint64) *wire { w.b = binary.BigEndian.AppendUint64(w.b, v); return w }
func (w *wire) raw(p []byte) *wire { w.b = append(w.b, p...); return w }
func (w *wire) str(s string) *wire { return w.u16(uint16(len(s))).raw([]byte(s)) }

// checkParseError reports whether err is a *ParseError about what ("" for
// any), and that it maps to CodeProtocol.
func checkParseError(t *testing.T, call string, err error, what string) {
	t.Helper()
	var pe *proto.ParseError
	if !errors.As(err, &pe) {
		t.Errorf("%s error = %v, want *proto.ParseError", call, err)
		return
	}
	if what != "" && pe.What != what {
		t.Errorf("%s ParseError.What = %q (%v), want %q", call, pe.What, err, what)
	}
	if !errors.Is(err, &proto.Error{Code: proto.CodeProtocol}) {
		t.Errorf("errors.Is(%v, &Error{Code: CodeProtocol}) = false, want true", err)
	}
	if got := proto.CodeOf(err); got != proto.CodeProtocol {
		t.Errorf("CodeOf(%v) = %v, want %v", err, got, proto.CodeProtocol)
	}
}

func TestMessageCasesCoverAllTypes(t *testing.T) {
	seen := map[proto.MsgType]bool{}
	for _, c := range messageCases() {
		seen[c.m.Type()] = true
	}
	for _, typ := range allTypes {
		if !seen[typ] {
			t.Errorf("messageCases has no %v", typ)
		}
	}
	for typ := 0; typ < 256; typ++ {
		if got, want := seen[proto.MsgType(typ)], isKnownType(proto.MsgType(typ)); got && !want {
			t.Errorf("messageCases has unknown type %v", proto.MsgType(typ))
		}
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, c := range messageCases() {
		t.Run(c.name, func(t *testing.T) {
			enc := encode(c.m)
			if got, want := proto.MsgType(enc[0]), c.m.Type(); got != want {
				t.Errorf("frame type = %v, want %v", got, want)
			}
			if got, want := binary.BigEndian.Uint32(enc[1:]), uint32(len(enc)-headerLen); got != want {
				t.Errorf("frame length = %d, want %d", got, want)
			}
			if got := len(enc) - headerLen; got > proto.MaxControlFrame {
				t.Fatalf("payload length = %d, want at most %d", got, proto.MaxControlFrame)
			}

			payload := append([]byte(nil), enc[headerLen:]...)
			got, err := proto.ParseMessage(c.m.Type(), payload)
			if err != nil {
				t.Fatalf("ParseMessage error = %v, want nil", err)
			}
			if !reflect.DeepEqual(got, c.m) {
				t.Errorf("ParseMessage = %+v, want %+v", got, c.m)
			}
			// The message must not reference the payload.
			for i := range payload {
				payload[i] = 0xa5
			}
			if !reflect.DeepEqual(got, c.m) {
				t.Errorf("after overwriting the payload, ParseMessage result = %+v, want %+v", got, c.m)
			}

			mr := proto.NewMessageReader(bytes.NewReader(enc))
			got, err = mr.Read()
			if err != nil {
				t.Fatalf("MessageReader.Read error = %v, want nil", err)
			}
			if !reflect.DeepEqual(got, c.m) {
				t.Errorf("MessageReader.Read = %+v, want %+v", got, c.m)
			}
			if _, err := mr.Read(); err != io.EOF {
				t.Errorf("second MessageReader.Read error = %v, want io.EOF", err)
			}

			// AppendMessage appends: the prefix stays, the frame follows it.
			prefix := []byte("prefix")
			app := proto.AppendMessage(append([]byte(nil), prefix...), c.m)
			if got, want := app, append(append([]byte(nil), prefix...), enc...); !bytes.Equal(got, want) {
				t.Errorf("AppendMessage(prefix) = %x..., want %x...", got[:min(len(got), 32)], want[:min(len(want), 32)])
			}
		})
	}
}

func TestParseMessageTruncated(t *testing.T) {
	for _, c := range messageCases() {
		t.Run(c.name, func(t *testing.T) {
			payload := payloadOf(c.m)
			for i := 0; i < len(payload); i++ {
				m, err := proto.ParseMessage(c.m.Type(), payload[:i])
				if m != nil {
					t.Errorf("ParseMessage(%v, %d of %d bytes) = %+v, want nil", c.m.Type(), i, len(payload), m)
				}
				checkParseError(t, fmt.Sprintf("ParseMessage(%v, %d of %d bytes)", c.m.Type(), i, len(payload)), err, "")
				if t.Failed() {
					return
				}
			}

			// The same through a MessageReader, whose frame header says
			// more than the stream holds. (The reader allocates the whole
			// payload per try, so the largest frames are skipped.)
			frame := encode(c.m)
			if len(frame) > 8<<10 {
				return
			}
			for i := 0; i < len(frame); i++ {
				m, err := proto.NewMessageReader(bytes.NewReader(frame[:i])).Read()
				if m != nil {
					t.Errorf("Read(%d of %d frame bytes) = %+v, want nil", i, len(frame), m)
				}
				if i == 0 {
					if err != io.EOF {
						t.Errorf("Read(empty stream) error = %v, want io.EOF", err)
					}
					continue
				}
				checkParseError(t, fmt.Sprintf("Read(%d of %d frame bytes)", i, len(frame)), err, "")
				if t.Failed() {
					return
				}
			}
		})
	}
}

func TestParseMessageTrailing(t *testing.T) {
	for _, c := range messageCases() {
		if len(encode(c.m))-headerLen+16 > proto.MaxControlFrame {
			continue // trailing bytes would exceed the frame limit
		}
		t.Run(c.name, func(t *testing.T) {
			for _, extra := range [][]byte{{0}, {0xff}, make([]byte, 16)} {
				payload := append(payloadOf(c.m), extra...)
				m, err := proto.ParseMessage(c.m.Type(), payload)
				if m != nil {
					t.Errorf("ParseMessage(%v, payload+%x) = %+v, want nil", c.m.Type(), extra, m)
				}
				checkParseError(t, fmt.Sprintf("ParseMessage(%v, payload+%x)", c.m.Type(), extra), err, c.m.Type().String())
			}
		})
	}
}

func TestParseMessageTooLong(t *testing.T) {
	for _, typ := range allTypes {
		m, err := proto.ParseMessage(typ, make([]byte, proto.MaxControlFrame+1))
		if m != nil {
			t.Errorf("ParseMessage(%v, %d bytes) = %+v, want nil", typ, proto.MaxControlFrame+1, m)
		}
		checkParseError(t, fmt.Sprintf("ParseMessage(%v, %d bytes)", typ, proto.MaxControlFrame+1), err, typ.String())
	}
}

type badPayload struct {
	name    string
	typ     proto.MsgType
	payload []byte
	what    string // the ParseError.What the decoder must report
}

// badPayloads returns payloads every decoder must reject, each naming the
// field that is wrong.
func badPayloads() []badPayload {
	enc := func(m proto.Message) []byte { return payloadOf(m) }
	over := func(n int) string { return strings.Repeat("x", n+1) }
	ready := func(rs ...proto.Range) []byte {
		return enc(&proto.UploadReady{Req: 1, Xfer: 2, UploadID: id16(1), Missing: rs})
	}
	listEntry := func(flags uint8) []byte {
		b := enc(&proto.ListEntry{Req: 1, Name: "a"})
		b[len(b)-4] = flags // before kind and the meta length
		return b
	}
	// request is an UploadRequest for "a" up to its kind.
	request := func() *wire {
		return new(wire).u32(1).str("a").u64(0).u64(0).u32(0).u8(0).u32(0).raw(make([]byte, 32))
	}
	const bad = "a\xffb" // invalid UTF-8
	return []badPayload{
		{"Register/name", proto.TypeRegister, enc(&proto.Register{Name: over(proto.MaxClientNameLen)}), "Register.name"},
		{"Register/nameUTF8", proto.TypeRegister, enc(&proto.Register{Name: bad}), "Register.name"},
		{"Register/nameSurrogate", proto.TypeRegister, enc(&proto.Register{Name: "\xed\xa0\x80"}), "Register.name"},
		{"Register/publicKey", proto.TypeRegister, enc(&proto.Register{Name: "a", PublicKey: pattern(proto.MaxPublicKeyLen+1, 1)}), "Register.publicKey"},
		{"Register/publicKey0xffff", proto.TypeRegister, new(wire).u16(1).str("a").u16(0xffff).b, "Register.publicKey"},
		{"Register/signature", proto.TypeRegister, enc(&proto.Register{Name: "a", Signature: pattern(proto.MaxSignatureLen+1, 1)}), "Register.signature"},
		{"Register/invite", proto.TypeRegister, enc(&proto.Register{Name: "a", Invite: over(proto.MaxInviteLen)}), "Register.invite"},
		{"Register/inviteUTF8", proto.TypeRegister, enc(&proto.Register{Name: "a", Invite: bad}), "Register.invite"},
		{"Register/noInviteField", proto.TypeRegister, new(wire).u16(1).str("a").u16(0).u16(0).b, "Register.invite"},
		{"Reconnect/signature", proto.TypeReconnect, enc(&proto.Reconnect{Signature: pattern(proto.MaxSignatureLen+1, 1)}), "Reconnect.signature"},
		{"Pace/belowMin", proto.TypePace, enc(&proto.Pace{Req: 1, Rate: proto.MinPace - 1}), "Pace.rate"},
		{"Pace/one", proto.TypePace, enc(&proto.Pace{Req: 1, Rate: 1}), "Pace.rate"},
		{"Welcome/wrappedKey", proto.TypeWelcome, enc(&proto.Welcome{WrappedKey: pattern(proto.MaxWrappedKeyLen+1, 1), ChunkSize: 1}), "Welcome.wrappedKey"},
		{"Welcome/chunkSize0", proto.TypeWelcome, enc(&proto.Welcome{ChunkSize: 0}), "Welcome.chunkSize"},
		{"Welcome/chunkSizeOver", proto.TypeWelcome, enc(&proto.Welcome{ChunkSize: proto.MaxChunkSize + 1}), "Welcome.chunkSize"},
		{"Welcome/chunkSizeMax32", proto.TypeWelcome, enc(&proto.Welcome{ChunkSize: math.MaxUint32}), "Welcome.chunkSize"},
		// AppendMessage truncates long error messages, so build this one by hand.
		{"Error/message", proto.TypeError, new(wire).u32(1).u16(1).str(over(proto.MaxMessageLen)).b, "Error.message"},
		// AppendMessage repairs invalid UTF-8 too, so this one is by hand as well.
		{"Error/messageUTF8", proto.TypeError, new(wire).u32(1).u16(1).str(bad).b, "Error.message"},
		{"UploadRequest/name", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: over(proto.MaxNameLen)}), "UploadRequest.name"},
		{"UploadRequest/size", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Size: proto.MaxFileSize + 1}), "UploadRequest.size"},
		{"UploadRequest/size64", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Size: math.MaxUint64}), "UploadRequest.size"},
		{"UploadRequest/mode", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Mode: 0o10000}), "UploadRequest.mode"},
		{"UploadRequest/modeType", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Mode: 0o100644}), "UploadRequest.mode"},
		{"UploadRequest/kind", proto.TypeUploadRequest, request().u8(7).u16(0).b, "UploadRequest.kind"},
		{"UploadRequest/kind0xff", proto.TypeUploadRequest, request().u8(0xff).u16(0).b, "UploadRequest.kind"},
		{"UploadRequest/noKind", proto.TypeUploadRequest, request().b, "UploadRequest.kind"},
		{"UploadRequest/noMeta", proto.TypeUploadRequest, request().u8(0).b, "UploadRequest.meta"},
		{"UploadRequest/meta", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Meta: pattern(proto.MaxMetaLen+1, 1)}), "UploadRequest.meta"},
		{"UploadRequest/dirSize", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Kind: proto.KindDir, Size: 1}), "UploadRequest.size"},
		{"UploadRequest/fifoSize", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Kind: proto.KindFIFO, Size: 4096}), "UploadRequest.size"},
		{"UploadRequest/symlinkEmpty", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Kind: proto.KindSymlink}), "UploadRequest.size"},
		{"UploadRequest/symlinkLong", proto.TypeUploadRequest, enc(&proto.UploadRequest{Name: "a", Kind: proto.KindSymlink, Size: proto.MaxSymlinkLen + 1}), "UploadRequest.size"},
		{"ListRequest/prefix", proto.TypeListRequest, enc(&proto.ListRequest{Prefix: over(proto.MaxNameLen)}), "ListRequest.prefix"},
		{"RestoreRequest/name", proto.TypeRestoreRequest, enc(&proto.RestoreRequest{Name: over(proto.MaxNameLen)}), "RestoreRequest.name"},
		{"ListEntry/name", proto.TypeListEntry, enc(&proto.ListEntry{Name: over(proto.MaxNameLen)}), "ListEntry.name"},
		{"ListEntry/flags4", proto.TypeListEntry, listEntry(4), "ListEntry.flags"},
		{"ListEntry/flags0xff", proto.TypeListEntry, listEntry(0xff), "ListEntry.flags"},
		{"ListEntry/size", proto.TypeListEntry, enc(&proto.ListEntry{Name: "a", Size: proto.MaxFileSize + 1}), "ListEntry.size"},
		{"ListEntry/mode", proto.TypeListEntry, enc(&proto.ListEntry{Name: "a", Mode: math.MaxUint32}), "ListEntry.mode"},
		{"ListEntry/socketSize", proto.TypeListEntry, enc(&proto.ListEntry{Name: "a", Kind: proto.KindSocket, Size: 1}), "ListEntry.size"},
		{"UploadReady/status", proto.TypeUploadReady, new(wire).u32(1).u32(2).raw(make([]byte, 16)).u8(3).u32(0).u16(0).b, "UploadReady.status"},
		{"UploadJoin/short", proto.TypeUploadJoin, new(wire).u32(1).raw(make([]byte, 15)).b, "UploadJoin.uploadID"},
		{"UploadResult/status", proto.TypeUploadResult, new(wire).u32(1).u8(3).u32(0).u64(0).b, "UploadResult.status"},
		{"RestoreDone/status", proto.TypeRestoreDone, new(wire).u32(1).u8(3).b, "RestoreDone.status"},
		{"RestoreResume/version0", proto.TypeRestoreResume, enc(&proto.RestoreResume{Name: "a"}), "RestoreResume.version"},
		{"RestoreResume/name", proto.TypeRestoreResume, enc(&proto.RestoreResume{Name: over(proto.MaxNameLen), Version: 1}), "RestoreResume.name"},
		{"RestoreResume/short", proto.TypeRestoreResume, new(wire).u32(1).u16(1).raw([]byte("a")).u32(1).raw(make([]byte, 31)).b, "RestoreResume.sha256"},
		{"RestoreResume/count", proto.TypeRestoreResume, resume().u16(proto.MaxResumeRanges + 1).u64(0).u64(1).b, "RestoreResume.count"},
		{"RestoreResume/fewer", proto.TypeRestoreResume, resume().u16(2).u64(0).u64(1).b, "RestoreResume.ranges"},
		{"RestoreResume/empty", proto.TypeRestoreResume, resume().u16(1).u64(5).u64(0).b, "RestoreResume.ranges"},
		{"RestoreResume/touching", proto.TypeRestoreResume, resume().u16(2).u64(0).u64(5).u64(5).u64(5).b, "RestoreResume.ranges"},
		{"RestoreResume/unordered", proto.TypeRestoreResume, resume().u16(2).u64(10).u64(5).u64(0).u64(5).b, "RestoreResume.ranges"},
		{"RestoreResume/beyond", proto.TypeRestoreResume, resume().u16(1).u64(proto.MaxFileSize).u64(1).b, "RestoreResume.ranges"},
		{"RestoreReady/name", proto.TypeRestoreReady, enc(&proto.RestoreReady{Name: over(proto.MaxNameLen)}), "RestoreReady.name"},
		{"RestoreReady/kind", proto.TypeRestoreReady, enc(&proto.RestoreReady{Kind: 9}), "RestoreReady.kind"},
		{"RestoreReady/charDevSize", proto.TypeRestoreReady, enc(&proto.RestoreReady{Kind: proto.KindCharDev, Size: 2}), "RestoreReady.size"},
		{"RestoreReady/meta", proto.TypeRestoreReady, enc(&proto.RestoreReady{Meta: pattern(proto.MaxMetaLen+1, 2)}), "RestoreReady.meta"},
		{"RestoreReady/size", proto.TypeRestoreReady, enc(&proto.RestoreReady{Size: proto.MaxFileSize + 1}), "RestoreReady.size"},
		{"RestoreReady/size64", proto.TypeRestoreReady, enc(&proto.RestoreReady{Size: math.MaxUint64}), "RestoreReady.size"},
		{"UploadReady/empty", proto.TypeUploadReady, ready(proto.Range{Off: 0, Len: 0}), "UploadReady.ranges"},
		{"UploadReady/emptySecond", proto.TypeUploadReady, ready(proto.Range{Off: 0, Len: 1}, proto.Range{Off: 5, Len: 0}), "UploadReady.ranges"},
		{"UploadReady/duplicate", proto.TypeUploadReady, ready(proto.Range{Off: 0, Len: 5}, proto.Range{Off: 0, Len: 5}), "UploadReady.ranges"},
		{"UploadReady/overlap", proto.TypeUploadReady, ready(proto.Range{Off: 0, Len: 10}, proto.Range{Off: 9, Len: 10}), "UploadReady.ranges"},
		{"UploadReady/unordered", proto.TypeUploadReady, ready(proto.Range{Off: 10, Len: 5}, proto.Range{Off: 0, Len: 5}), "UploadReady.ranges"},
		{"UploadReady/offBeyond", proto.TypeUploadReady, ready(proto.Range{Off: proto.MaxFileSize, Len: 1}), "UploadReady.ranges"},
		{"UploadReady/endBeyond", proto.TypeUploadReady, ready(proto.Range{Off: proto.MaxFileSize - 1, Len: 2}), "UploadReady.ranges"},
		{"UploadReady/lenBeyond", proto.TypeUploadReady, ready(proto.Range{Off: 0, Len: proto.MaxFileSize + 1}), "UploadReady.ranges"},
		{"UploadReady/offOverflow", proto.TypeUploadReady, ready(proto.Range{Off: math.MaxUint64, Len: 1}), "UploadReady.ranges"},
		{"UploadReady/lenOverflow", proto.TypeUploadReady, ready(proto.Range{Off: 1, Len: math.MaxUint64}), "UploadReady.ranges"},
		{"UploadReady/wrapAround", proto.TypeUploadReady, ready(proto.Range{Off: 10, Len: 5}, proto.Range{Off: math.MaxUint64 - 2, Len: 5}), "UploadReady.ranges"},
		// A count over MaxRanges is refused before the ranges are looked at
		// (MaxRanges+1 real ranges would exceed MaxControlFrame).
		{"UploadReady/count", proto.TypeUploadReady, new(wire).u32(1).u32(2).raw(make([]byte, 16)).u8(0).u32(0).u16(proto.MaxRanges + 1).u64(0).u64(1).b, "UploadReady.count"},
		{"UploadReady/count0xffff", proto.TypeUploadReady, new(wire).u32(1).u32(2).raw(make([]byte, 16)).u8(0).u32(0).u16(0xffff).b, "UploadReady.count"},
		{"UploadReady/countShort", proto.TypeUploadReady, new(wire).u32(1).u32(2).raw(make([]byte, 16)).u8(0).u32(0).u16(2).u64(0).u64(1).b, "UploadReady.ranges"},
	}
}

func TestParseMessageRejects(t *testing.T) {
	for _, c := range badPayloads() {
		t.Run(c.name, func(t *testing.T) {
			m, err := proto.ParseMessage(c.typ, c.payload)
			if m != nil {
				t.Errorf("ParseMessage(%v) = %+v, want nil", c.typ, m)
			}
			checkParseError(t, fmt.Sprintf("ParseMessage(%v)", c.typ), err, c.what)
		})
	}
}

func TestParseMessageUnknownType(t *testing.T) {
	for typ := 0; typ < 256; typ++ {
		mt := proto.MsgType(typ)
		if isKnownType(mt) {
			continue
		}
		for _, payload := range [][]byte{nil, {0}, payloadOf(&proto.UploadCommit{Xfer: 1})} {
			m, err := proto.ParseMessage(mt, payload)
			if m != nil {
				t.Errorf("ParseMessage(%#x, %x) = %+v, want nil", typ, payload, m)
			}
			checkParseError(t, fmt.Sprintf("ParseMessage(%#x, %x)", typ, payload), err, "frame")
		}
		// The reader rejects an unknown type before reading its payload.
		hdr := rawFrame(mt, make([]byte, 8))[:headerLen]
		mr := proto.NewMessageReader(&headerOnlyReader{t: t, hdr: hdr})
		m, err := mr.Read()
		if m != nil {
			t.Errorf("MessageReader.Read(type %#x) = %+v, want nil", typ, m)
		}
		checkParseError(t, fmt.Sprintf("MessageReader.Read(type %#x)", typ), err, "frame")
	}
}

// headerOnlyReader yields hdr and then fails the test if it is read again.
type headerOnlyReader struct {
	t   *testing.T
	hdr []byte
}

var errPastHeader = errors.New("read past the frame header")

func (r *headerOnlyReader) Read(p []byte) (int, error) {
	if len(r.hdr) == 0 {
		r.t.Errorf("Read after the frame header: the payload must not be read")
		return 0, errPastHeader
	}
	n := copy(p, r.hdr)
	r.hdr = r.hdr[n:]
	return n, nil
}

func TestMessageReaderOversizedFrame(t *testing.T) {
	for _, typ := range []proto.MsgType{proto.TypeRegister, proto.TypeUploadReady, proto.TypeListEntry, 0x00, 0xff} {
		for _, n := range []uint32{proto.MaxControlFrame + 1, 1 << 20, 1 << 31, math.MaxUint32} {
			hdr := append([]byte{byte(typ)}, binary.BigEndian.AppendUint32(nil, n)...)
			mr := proto.NewMessageReader(&headerOnlyReader{t: t, hdr: hdr})
			m, err := mr.Read()
			if m != nil {
				t.Errorf("Read(%v, length %d) = %+v, want nil", typ, n, m)
			}
			checkParseError(t, fmt.Sprintf("Read(%v, length %d)", typ, n), err, "")
		}
	}
}

func TestMessageReaderLimitInclusive(t *testing.T) {
	// A frame of exactly MaxControlFrame bytes is read and handed to the
	// decoder, which then finds trailing bytes after UploadCommit's xfer.
	frame := rawFrame(proto.TypeUploadCommit, make([]byte, proto.MaxControlFrame))
	m, err := proto.NewMessageReader(bytes.NewReader(frame)).Read()
	if m != nil {
		t.Errorf("Read = %+v, want nil", m)
	}
	checkParseError(t, "Read(UploadCommit with MaxControlFrame bytes)", err, "UploadCommit")
}

// readers wraps a stream in readers that deliver it in different pieces.
var readers = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"whole", func(r io.Reader) io.Reader { return r }},
	{"oneByte", iotest.OneByteReader},
	{"half", iotest.HalfReader},
	{"dataErr", iotest.DataErrReader},
}

func TestMessageReaderStream(t *testing.T) {
	cases := messageCases()
	var stream []byte
	for _, c := range cases {
		stream = proto.AppendMessage(stream, c.m)
	}
	for _, rd := range readers {
		t.Run(rd.name, func(t *testing.T) {
			mr := proto.NewMessageReader(rd.wrap(bytes.NewReader(stream)))
			for i, c := range cases {
				got, err := mr.Read()
				if err != nil {
					t.Fatalf("Read %d (%s) error = %v, want nil", i, c.name, err)
				}
				if !reflect.DeepEqual(got, c.m) {
					t.Errorf("Read %d = %+v, want %+v", i, got, c.m)
				}
			}
			for i := 0; i < 2; i++ {
				if got, err := mr.Read(); err != io.EOF {
					t.Errorf("Read at end = %v, %v, want nil, io.EOF", got, err)
				}
			}
		})
	}
}

func TestMessageReaderTruncatedStream(t *testing.T) {
	a := encode(&proto.UploadRequest{Req: 1, Name: "a/b", Size: 10})
	b := encode(&proto.Register{Version: 1, Name: "n", PublicKey: pattern(20, 1), Signature: pattern(20, 2)})
	stream := append(append([]byte(nil), a...), b...)
	for _, rd := range readers {
		for cut := 0; cut <= len(stream); cut++ {
			wantMsgs := 0
			if cut >= len(a) {
				wantMsgs++
			}
			if cut == len(stream) {
				wantMsgs++
			}
			atBoundary := cut == 0 || cut == len(a) || cut == len(stream)

			mr := proto.NewMessageReader(rd.wrap(bytes.NewReader(stream[:cut])))
			var msgs int
			var err error
			for {
				var m proto.Message
				if m, err = mr.Read(); err != nil {
					break
				}
				msgs++
				if msgs > 2 {
					t.Fatalf("%s: cut %d: Read returned message %d (%+v), want at most 2", rd.name, cut, msgs, m)
				}
			}
			if msgs != wantMsgs {
				t.Errorf("%s: cut %d: messages read = %d, want %d", rd.name, cut, msgs, wantMsgs)
			}
			if atBoundary {
				if err != io.EOF {
					t.Errorf("%s: cut %d (frame boundary): Read error = %v, want io.EOF", rd.name, cut, err)
				}
			} else {
				checkParseError(t, fmt.Sprintf("%s: cut %d: Read", rd.name, cut), err, "")
			}
		}
	}
}

func TestMessageReaderReadError(t *testing.T) {
	errBoom := errors.New("boom")
	frame := encode(&proto.UploadRequest{Req: 1, Name: "a/b", Size: 10})
	for _, cut := range []int{0, 1, headerLen - 1, headerLen, headerLen + 1, len(frame) - 1} {
		r := io.MultiReader(bytes.NewReader(frame[:cut]), iotest.ErrReader(errBoom))
		m, err := proto.NewMessageReader(r).Read()
		if m != nil {
			t.Errorf("Read with error after %d bytes = %+v, want nil", cut, m)
		}
		if !errors.Is(err, errBoom) {
			t.Errorf("Read with error after %d bytes: error = %v, want %v", cut, err, errBoom)
		}
	}
}

func TestMessageReaderDoesNotAlias(t *testing.T) {
	first := &proto.Register{Version: 1, Name: "first", PublicKey: pattern(300, 1), Signature: pattern(256, 2)}
	second := &proto.Register{Version: 2, Name: "other", PublicKey: pattern(300, 3), Signature: pattern(256, 4)}
	want := &proto.Register{Version: 1, Name: "first", PublicKey: pattern(300, 1), Signature: pattern(256, 2)}
	mr := proto.NewMessageReader(bytes.NewReader(append(encode(first), encode(second)...)))
	got, err := mr.Read()
	if err != nil {
		t.Fatalf("first Read error = %v, want nil", err)
	}
	if _, err := mr.Read(); err != nil {
		t.Fatalf("second Read error = %v, want nil", err)
	}
	if !reflect.DeepEqual(got, proto.Message(want)) {
		t.Errorf("first message after the second Read = %+v, want %+v", got, want)
	}
}

// TestUploadReadyNoRangesRoundTrip exposes a decoder inconsistency.
//
// Regression: an UploadReady with no ranges decodes Missing as nil, like every
// other empty field, so it round-trips under reflect.DeepEqual.
func TestUploadReadyNoRangesRoundTrip(t *testing.T) {
	for _, m := range []*proto.UploadReady{
		{},
		{Req: 1, Xfer: 2, UploadID: id16(3), Status: proto.ReadyUnchanged, Version: 4},
	} {
		got, err := proto.ParseMessage(proto.TypeUploadReady, payloadOf(m))
		if err != nil {
			t.Fatalf("ParseMessage(%+v) error = %v, want nil", m, err)
		}
		if !reflect.DeepEqual(got, proto.Message(m)) {
			t.Errorf("ParseMessage(AppendMessage(%+v)).Missing = %#v, want %#v", m, got.(*proto.UploadReady).Missing, m.Missing)
		}
	}
}

// TestUploadReadyMaxRanges exposes inconsistent limits.
//
// Regression: an UploadReady with MaxRanges ranges fits in one control frame.
func TestUploadReadyMaxRanges(t *testing.T) {
	m := &proto.UploadReady{Req: 1, Xfer: 2, UploadID: id16(3), Missing: ranges(proto.MaxRanges)}
	frame := encode(m)
	if got := len(frame) - headerLen; got > proto.MaxControlFrame {
		t.Errorf("UploadReady with MaxRanges (%d) ranges: payload = %d bytes, want at most MaxControlFrame (%d)", proto.MaxRanges, got, proto.MaxControlFrame)
	}
	got, err := proto.NewMessageReader(bytes.NewReader(frame)).Read()
	if err != nil {
		t.Fatalf("Read(UploadReady with MaxRanges ranges) error = %v, want nil", err)
	}
	if !reflect.DeepEqual(got, proto.Message(m)) {
		t.Errorf("Read(UploadReady with MaxRanges ranges) = %d ranges, want %d", len(got.(*proto.UploadReady).Missing), proto.MaxRanges)
	}
}

func TestErrorMessageTruncates(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"fits", strings.Repeat("a", proto.MaxMessageLen), strings.Repeat("a", proto.MaxMessageLen)},
		{"ascii", strings.Repeat("a", proto.MaxMessageLen+100), strings.Repeat("a", proto.MaxMessageLen)},
		{"runeFits", strings.Repeat("a", proto.MaxMessageLen-2) + "é" + "tail", strings.Repeat("a", proto.MaxMessageLen-2) + "é"},
		// Regression: a long message is cut at a character boundary, so the frame
		// stays valid UTF-8 and the peer still gets the error.
		{"splitTwoByteRune", strings.Repeat("a", proto.MaxMessageLen-1) + "é", strings.Repeat("a", proto.MaxMessageLen-1)},
		{"splitThreeByteRune", strings.Repeat("a", proto.MaxMessageLen-2) + "€", strings.Repeat("a", proto.MaxMessageLen-2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := proto.ParseMessage(proto.TypeError, payloadOf(&proto.ErrorMessage{Req: 1, Code: proto.CodeInternal, Message: tt.in}))
			if err != nil {
				t.Fatalf("ParseMessage(ErrorMessage with %d-byte message) error = %v, want nil", len(tt.in), err)
			}
			if got := m.(*proto.ErrorMessage).Message; got != tt.want {
				t.Errorf("Message = %d bytes %q..., want %d bytes %q...", len(got), got[max(0, len(got)-8):], len(tt.want), tt.want[max(0, len(tt.want)-8):])
			}
		})
	}
}

func TestErrorMessageErr(t *testing.T) {
	m := &proto.ErrorMessage{Req: 3, Code: proto.CodeNameTaken, Message: "laptop"}
	err := m.Err()
	if got, want := *err, (proto.Error{Code: proto.CodeNameTaken, Message: "laptop"}); got != want {
		t.Errorf("Err() = %+v, want %+v", got, want)
	}
	if got, want := err.Error(), "name taken: laptop"; got != want {
		t.Errorf("Err().Error() = %q, want %q", got, want)
	}
}

func TestErrorIs(t *testing.T) {
	pe := &proto.ParseError{What: "Register.name", Err: errors.New("x")}
	tests := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"sameCode", proto.Errorf(proto.CodeNotFound, "a/b"), &proto.Error{Code: proto.CodeNotFound}, true},
		{"otherCode", proto.Errorf(proto.CodeNotFound, "a/b"), &proto.Error{Code: proto.CodeInternal}, false},
		{"messageIgnored", &proto.Error{Code: proto.CodeLimit, Message: "x"}, &proto.Error{Code: proto.CodeLimit, Message: "y"}, true},
		{"wrapped", fmt.Errorf("ctx: %w", proto.Errorf(proto.CodeNoSpace, "")), &proto.Error{Code: proto.CodeNoSpace}, true},
		{"notError", errors.New("x"), &proto.Error{Code: proto.CodeInternal}, false},
		{"parseErrorProtocol", pe, &proto.Error{Code: proto.CodeProtocol}, true},
		{"parseErrorOther", pe, &proto.Error{Code: proto.CodeBadChunk}, false},
		{"wrappedParseError", fmt.Errorf("ctx: %w", pe), &proto.Error{Code: proto.CodeProtocol}, true},
		{"chunkAuth", proto.ErrChunkAuth, &proto.Error{Code: proto.CodeBadChunk}, true},
		{"badProof", proto.ErrBadProof, &proto.Error{Code: proto.CodeBadProof}, true},
	}
	for _, tt := range tests {
		if got := errors.Is(tt.err, tt.target); got != tt.want {
			t.Errorf("%s: errors.Is(%v, %v) = %v, want %v", tt.name, tt.err, tt.target, got, tt.want)
		}
	}
}

func TestCodeOf(t *testing.T) {
	pe := &proto.ParseError{What: "Welcome.chunkSize", Err: errors.New("x")}
	tests := []struct {
		name string
		err  error
		want proto.ErrorCode
	}{
		{"nil", nil, proto.CodeInternal},
		{"plain", errors.New("x"), proto.CodeInternal},
		{"eof", io.EOF, proto.CodeInternal},
		{"error", proto.Errorf(proto.CodeNotFound, "x"), proto.CodeNotFound},
		{"noError", &proto.Error{Code: proto.CodeNoError}, proto.CodeNoError},
		{"wrappedError", fmt.Errorf("a: %w", fmt.Errorf("b: %w", &proto.Error{Code: proto.CodeNameTaken})), proto.CodeNameTaken},
		{"parseError", pe, proto.CodeProtocol},
		{"wrappedParseError", fmt.Errorf("ctx: %w", pe), proto.CodeProtocol},
		{"parseErrorNilErr", &proto.ParseError{What: "x"}, proto.CodeProtocol},
		{"chunkAuth", proto.ErrChunkAuth, proto.CodeBadChunk},
		{"badProof", proto.ErrBadProof, proto.CodeBadProof},
		{"joined", errors.Join(errors.New("x"), &proto.Error{Code: proto.CodeShutdown}), proto.CodeShutdown},
		{"unknownCode", &proto.Error{Code: 0x1234}, 0x1234},
	}
	for _, tt := range tests {
		if got := proto.CodeOf(tt.err); got != tt.want {
			t.Errorf("%s: CodeOf(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestErrorStrings(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&proto.Error{Code: proto.CodeNotFound}, "not found"},
		{&proto.Error{Code: proto.CodeNotFound, Message: "a/b"}, "not found: a/b"},
		{proto.Errorf(proto.CodeTooLarge, "%d > %d", 2, 1), "too large: 2 > 1"},
		{&proto.Error{Code: 0x99}, "error code 0x99"},
		{&proto.Error{Code: proto.CodeShutdown, Message: "server shutting down"}, "server shutting down"},
		{&proto.ParseError{What: "Register.name"}, "proto: malformed Register.name"},
		{&proto.ParseError{What: "Register.name", Err: errors.New("truncated")}, "proto: malformed Register.name: truncated"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	inner := errors.New("inner")
	if got := errors.Unwrap(&proto.ParseError{What: "x", Err: inner}); got != inner {
		t.Errorf("errors.Unwrap(ParseError) = %v, want %v", got, inner)
	}
}

func TestErrorCodeString(t *testing.T) {
	tests := []struct {
		code proto.ErrorCode
		want string
	}{
		{proto.CodeNoError, "no error"},
		{proto.CodeProtocol, "protocol violation"},
		{proto.CodeVersion, "unsupported version"},
		{proto.CodeUnknownClient, "unknown client"},
		{proto.CodeBadProof, "bad proof of possession"},
		{proto.CodeNameTaken, "name taken"},
		{proto.CodeInvalidName, "invalid name"},
		{proto.CodeNotFound, "not found"},
		{proto.CodeInternal, "internal server error"},
		{proto.CodeNoSpace, "no space left on server"},
		{proto.CodeTooLarge, "too large"},
		{proto.CodeLimit, "limit reached"},
		{proto.CodeAborted, "aborted"},
		{proto.CodeRegistrationClosed, "registration closed"},
		{proto.CodeBadChunk, "bad chunk"},
		{proto.CodeShutdown, "server shutting down"},
		{proto.CodeBadKey, "bad public key"},
		{proto.CodeDamaged, "damaged on the server"},
		{proto.CodeUnsupported, "not supported"},
		{0x13, "error code 0x13"},
		{0xffff, "error code 0xffff"},
	}
	for _, tt := range tests {
		if got := tt.code.String(); got != tt.want {
			t.Errorf("ErrorCode(%#x).String() = %q, want %q", uint16(tt.code), got, tt.want)
		}
	}
}

func TestMsgTypeString(t *testing.T) {
	want := map[proto.MsgType]string{
		proto.TypeRegister:       "Register",
		proto.TypeReconnect:      "Reconnect",
		proto.TypePace:           "Pace",
		proto.TypePaced:          "Paced",
		proto.TypeUploadRequest:  "UploadRequest",
		proto.TypeUploadCommit:   "UploadCommit",
		proto.TypeUploadAbort:    "UploadAbort",
		proto.TypeUploadJoin:     "UploadJoin",
		proto.TypeListRequest:    "ListRequest",
		proto.TypeRestoreRequest: "RestoreRequest",
		proto.TypeRestoreDone:    "RestoreDone",
		proto.TypeRestoreResume:  "RestoreResume",
		proto.TypeWelcome:        "Welcome",
		proto.TypeError:          "Error",
		proto.TypeUploadReady:    "UploadReady",
		proto.TypeUploadChecksum: "UploadChecksum",
		proto.TypeUploadResult:   "UploadResult",
		proto.TypeListEntry:      "ListEntry",
		proto.TypeListEnd:        "ListEnd",
		proto.TypeRestoreReady:   "RestoreReady",
	}
	for typ := 0; typ < 256; typ++ {
		mt := proto.MsgType(typ)
		w, ok := want[mt]
		if !ok {
			w = fmt.Sprintf("MsgType(%#x)", typ)
		}
		if got := mt.String(); got != w {
			t.Errorf("MsgType(%#x).String() = %q, want %q", typ, got, w)
		}
	}
	// Client-to-server codes are below 0x80, server-to-client from 0x80.
	for _, c := range messageCases() {
		m := c.m
		toServer := false
		switch m.(type) {
		case *proto.Register, *proto.Reconnect, *proto.Pace, *proto.UploadRequest, *proto.UploadCommit,
			*proto.UploadAbort, *proto.UploadJoin, *proto.ListRequest, *proto.RestoreRequest, *proto.RestoreDone, *proto.RestoreResume:
			toServer = true
		}
		if got := m.Type() < 0x80; got != toServer {
			t.Errorf("%v < 0x80 = %v, want %v", m.Type(), got, toServer)
		}
	}
}

// manyRanges returns n ranges of one byte, a byte apart.
func manyRanges(n int) []proto.Range {
	rs := make([]proto.Range, n)
	for i := range rs {
		rs[i] = proto.Range{Off: uint64(2 * i), Len: 1}
	}
	return rs
}

// resume is the fixed part of a RestoreResume for "a" version 1, up to its
// count.
func resume() *wire { return new(wire).u32(1).u16(1).raw([]byte("a")).u32(1).raw(make([]byte, 32)) }

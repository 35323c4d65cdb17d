package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// MsgType identifies a control-stream message. Codes below 0x80 travel from
// client to server, codes from 0x80 up from server to client.
type MsgType uint8

// Control-stream message types. Their layouts are given on each struct and
// in PROTOCOL.md. Never renumber.
const (
	TypeRegister       MsgType = 0x01
	TypeReconnect      MsgType = 0x02
	TypePace           MsgType = 0x03
	TypeUploadRequest  MsgType = 0x10
	TypeUploadCommit   MsgType = 0x11
	TypeUploadAbort    MsgType = 0x12
	TypeUploadJoin     MsgType = 0x13
	TypeListRequest    MsgType = 0x20
	TypeRestoreRequest MsgType = 0x30
	TypeRestoreDone    MsgType = 0x31
	TypeRestoreResume  MsgType = 0x32

	TypeWelcome        MsgType = 0x81
	TypeError          MsgType = 0x82
	TypePaced          MsgType = 0x83
	TypeUploadReady    MsgType = 0x90
	TypeUploadChecksum MsgType = 0x91
	TypeUploadResult   MsgType = 0x92
	TypeListEntry      MsgType = 0xa0
	TypeListEnd        MsgType = 0xa1
	TypeRestoreReady   MsgType = 0xb0
)

func (t MsgType) String() string {
	switch t {
	case TypeRegister:
		return "Register"
	case TypeReconnect:
		return "Reconnect"
	case TypePace:
		return "Pace"
	case TypePaced:
		return "Paced"
	case TypeUploadRequest:
		return "UploadRequest"
	case TypeUploadCommit:
		return "UploadCommit"
	case TypeUploadAbort:
		return "UploadAbort"
	case TypeUploadJoin:
		return "UploadJoin"
	case TypeListRequest:
		return "ListRequest"
	case TypeRestoreRequest:
		return "RestoreRequest"
	case TypeRestoreDone:
		return "RestoreDone"
	case TypeRestoreResume:
		return "RestoreResume"
	case TypeWelcome:
		return "Welcome"
	case TypeError:
		return "Error"
	case TypeUploadReady:
		return "UploadReady"
	case TypeUploadChecksum:
		return "UploadChecksum"
	case TypeUploadResult:
		return "UploadResult"
	case TypeListEntry:
		return "ListEntry"
	case TypeListEnd:
		return "ListEnd"
	case TypeRestoreReady:
		return "RestoreReady"
	}
	return fmt.Sprintf("MsgType(%#x)", uint8(t))
}

// Message is a control-stream message.
type Message interface {
	Type() MsgType
	appendPayload(b []byte) []byte
	decode(d *decoder)
}

// frameHeaderLen is the size of a control frame header: type (1) + length (4).
const frameHeaderLen = 5

// AppendMessage appends m as a control frame: type (uint8), payload length
// (uint32), payload.
func AppendMessage(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, byte(m.Type()), 0, 0, 0, 0)
	b = m.appendPayload(b)
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-frameHeaderLen))
	return b
}

// newMessage returns an empty message of type t, or nil if t is unknown.
func newMessage(t MsgType) Message {
	switch t {
	case TypeRegister:
		return &Register{}
	case TypeReconnect:
		return &Reconnect{}
	case TypePace:
		return &Pace{}
	case TypePaced:
		return &Paced{}
	case TypeUploadRequest:
		return &UploadRequest{}
	case TypeUploadCommit:
		return &UploadCommit{}
	case TypeUploadAbort:
		return &UploadAbort{}
	case TypeUploadJoin:
		return &UploadJoin{}
	case TypeListRequest:
		return &ListRequest{}
	case TypeRestoreRequest:
		return &RestoreRequest{}
	case TypeRestoreDone:
		return &RestoreDone{}
	case TypeRestoreResume:
		return &RestoreResume{}
	case TypeWelcome:
		return &Welcome{}
	case TypeError:
		return &ErrorMessage{}
	case TypeUploadReady:
		return &UploadReady{}
	case TypeUploadChecksum:
		return &UploadChecksum{}
	case TypeUploadResult:
		return &UploadResult{}
	case TypeListEntry:
		return &ListEntry{}
	case TypeListEnd:
		return &ListEnd{}
	case TypeRestoreReady:
		return &RestoreReady{}
	}
	return nil
}

// ParseMessage decodes the payload of a control frame of type t. The
// returned message does not reference payload.
func ParseMessage(t MsgType, payload []byte) (Message, error) {
	m := newMessage(t)
	if m == nil {
		return nil, &ParseError{What: "frame", Err: fmt.Errorf("unknown message type %#x", uint8(t))}
	}
	if err := decodeMessage(m, payload, new(decoder)); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeMessage decodes payload into m, an empty message, using d.
func decodeMessage(m Message, payload []byte, d *decoder) error {
	t := m.Type()
	if len(payload) > MaxControlFrame {
		return &ParseError{What: t.String(), Err: errTooLong}
	}
	*d = decoder{b: payload, what: t.String()}
	m.decode(d)
	return d.finish()
}

// MessageReader reads control frames from a stream, reusing one buffer.
type MessageReader struct {
	r   io.Reader
	hdr [frameHeaderLen]byte
	buf []byte
	// dec is the decoder Read uses. Passed to a message's decode method, a
	// decoder of its own would move to the heap on every message.
	dec decoder
}

// NewMessageReader returns a reader of control frames from r.
func NewMessageReader(r io.Reader) *MessageReader { return &MessageReader{r: r} }

// Read reads one control frame and decodes it. It returns io.EOF only when
// the stream ended cleanly between frames. A frame longer than
// MaxControlFrame is rejected before its payload is read.
func (mr *MessageReader) Read() (Message, error) {
	m, p, err := mr.readFrame()
	if err != nil {
		return nil, err
	}
	if err := decodeMessage(m, p, &mr.dec); err != nil {
		return nil, err
	}
	return m, nil
}

// ReadRaw reads one control frame of a known type without decoding its
// payload, which is valid until the next read. A server uses it to check
// the version of a Register or Reconnect before parsing the rest, whose
// layout a later version may change.
func (mr *MessageReader) ReadRaw() (MsgType, []byte, error) {
	m, p, err := mr.readFrame()
	if err != nil {
		return 0, nil, err
	}
	return m.Type(), p, nil
}

// readFrame reads one control frame and returns its payload, valid until
// the next read, and an empty message of its type to decode it into.
func (mr *MessageReader) readFrame() (Message, []byte, error) {
	if _, err := io.ReadFull(mr.r, mr.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, &ParseError{What: "frame header", Err: errShort}
		}
		return nil, nil, err
	}
	t := MsgType(mr.hdr[0])
	n := binary.BigEndian.Uint32(mr.hdr[1:])
	if n > MaxControlFrame {
		return nil, nil, &ParseError{What: t.String(), Err: fmt.Errorf("%d-byte payload over the %d-byte limit", n, MaxControlFrame)}
	}
	m := newMessage(t)
	if m == nil {
		return nil, nil, &ParseError{What: "frame", Err: fmt.Errorf("unknown message type %#x", uint8(t))}
	}
	if cap(mr.buf) < int(n) {
		mr.buf = make([]byte, n)
	}
	p := mr.buf[:n]
	if _, err := io.ReadFull(mr.r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, &ParseError{What: t.String(), Err: errShort}
		}
		return nil, nil, err
	}
	return m, p, nil
}

// HelloVersion returns the protocol version a Register or Reconnect
// payload starts with, or false if the payload is too short.
func HelloVersion(payload []byte) (uint16, bool) {
	if len(payload) < 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(payload), true
}

// Register asks the server to register a new client (or to return the ID of
// the client that registered this name with this key before).
//
//	version   uint16
//	name      uint16 length + UTF-8, 1..MaxClientNameLen bytes
//	publicKey uint16 length + PKIX DER RSA public key, ..MaxPublicKeyLen
//	signature uint16 length + RSA-PSS signature over RegisterDigest
//	invite    uint16 length + invite token, 0..MaxInviteLen bytes (0: none)
type Register struct {
	Version   uint16
	Name      string
	PublicKey []byte
	Signature []byte
	Invite    string // a secret: never log it
}

func (*Register) Type() MsgType { return TypeRegister }
func (m *Register) appendPayload(b []byte) []byte {
	b = appendU16(b, m.Version)
	b = appendString16(b, m.Name)
	b = appendBytes16(b, m.PublicKey)
	b = appendBytes16(b, m.Signature)
	return appendString16(b, m.Invite)
}
func (m *Register) decode(d *decoder) {
	m.Version = d.u16("version")
	m.Name = d.string16(MaxClientNameLen, "name")
	m.PublicKey = d.bytes16(MaxPublicKeyLen, "publicKey")
	m.Signature = d.bytes16(MaxSignatureLen, "signature")
	m.Invite = d.string16(MaxInviteLen, "invite")
}

// Reconnect opens a session for a registered client.
//
//	version   uint16
//	clientID  [16]byte
//	signature uint16 length + RSA-PSS signature over ReconnectDigest
type Reconnect struct {
	Version   uint16
	ClientID  [16]byte
	Signature []byte
}

func (*Reconnect) Type() MsgType { return TypeReconnect }
func (m *Reconnect) appendPayload(b []byte) []byte {
	b = appendU16(b, m.Version)
	b = append(b, m.ClientID[:]...)
	return appendBytes16(b, m.Signature)
}
func (m *Reconnect) decode(d *decoder) {
	m.Version = d.u16("version")
	d.fixed(m.ClientID[:], "clientID")
	m.Signature = d.bytes16(MaxSignatureLen, "signature")
}

// Welcome ends the handshake: the client's ID and this session's key
// wrapped with the client's public key.
//
//	clientID   [16]byte
//	wrappedKey uint16 length + RSA-OAEP(SHA-256) ciphertext of the 32-byte key
//	chunkSize  uint32: the largest chunk plaintext the server accepts and sends
//	streams    uint16: how many data streams the client should use at most
type Welcome struct {
	ClientID   [16]byte
	WrappedKey []byte
	ChunkSize  uint32
	Streams    uint16
}

func (*Welcome) Type() MsgType { return TypeWelcome }
func (m *Welcome) appendPayload(b []byte) []byte {
	b = append(b, m.ClientID[:]...)
	b = appendBytes16(b, m.WrappedKey)
	b = appendU32(b, m.ChunkSize)
	return appendU16(b, m.Streams)
}
func (m *Welcome) decode(d *decoder) {
	d.fixed(m.ClientID[:], "clientID")
	m.WrappedKey = d.bytes16(MaxWrappedKeyLen, "wrappedKey")
	m.ChunkSize = d.u32("chunkSize")
	m.Streams = d.u16("streams")
	if d.err == nil && (m.ChunkSize == 0 || m.ChunkSize > MaxChunkSize) {
		d.fail(fmt.Errorf("chunk size %d not in 1..%d", m.ChunkSize, MaxChunkSize), "chunkSize")
	}
}

// ErrorMessage reports the failure of request Req (0: of the session).
//
//	req     uint32
//	code    uint16
//	message uint16 length + UTF-8, ..MaxMessageLen
type ErrorMessage struct {
	Req     uint32
	Code    ErrorCode
	Message string
}

func (*ErrorMessage) Type() MsgType { return TypeError }
func (m *ErrorMessage) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendU16(b, uint16(m.Code))
	msg := strings.ToValidUTF8(m.Message, "\uFFFD")
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
		for len(msg) > 0 && !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1] // cut at a character boundary
		}
	}
	return appendString16(b, msg)
}
func (m *ErrorMessage) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Code = ErrorCode(d.u16("code"))
	m.Message = d.string16(MaxMessageLen, "message")
}

// Err returns the error the message carries.
func (m *ErrorMessage) Err() *Error { return &Error{Code: m.Code, Message: m.Message} }

// Upload request flags.
const (
	// FlagHashed says CRC and SHA256 hold the content's checksums, so the
	// server compares content rather than size and modification time.
	FlagHashed uint8 = 1 << 0
)

// UploadRequest asks to store an entry: a file, a directory, a symbolic
// link (its content is the target) or a special file. The server answers
// UploadReady or ErrorMessage with the same Req.
//
//	req     uint32: chosen by the client, unique among its open requests
//	name    uint16 length + bytes, ..MaxNameLen (ValidateName)
//	size    uint64, ..MaxFileSize; 0 for a kind without content,
//	        1..MaxSymlinkLen for a symbolic link
//	modTime int64: Unix nanoseconds
//	mode    uint32: permission bits, setuid, setgid, sticky (..ModeMask)
//	flags   uint8
//	crc     uint32: cksum value, valid with FlagHashed
//	sha256  [32]byte: valid with FlagHashed
//	kind    uint8: a Kind
//	meta    uint16 length + metadata record (ParseMeta), ..MaxMetaLen
type UploadRequest struct {
	Req     uint32
	Name    string
	Size    uint64
	ModTime int64
	Mode    uint32
	Flags   uint8
	CRC     uint32
	SHA256  [32]byte
	Kind    Kind
	Meta    []byte
}

func (*UploadRequest) Type() MsgType { return TypeUploadRequest }
func (m *UploadRequest) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendString16(b, m.Name)
	b = appendU64(b, m.Size)
	b = appendU64(b, uint64(m.ModTime))
	b = appendU32(b, m.Mode)
	b = appendU8(b, m.Flags)
	b = appendU32(b, m.CRC)
	b = append(b, m.SHA256[:]...)
	b = appendU8(b, uint8(m.Kind))
	return appendBytes16(b, m.Meta)
}
func (m *UploadRequest) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Name = d.name16("name")
	m.Size = d.u64("size")
	m.ModTime = int64(d.u64("modTime"))
	m.Mode = d.mode()
	m.Flags = d.u8("flags")
	m.CRC = d.u32("crc")
	d.fixed(m.SHA256[:], "sha256")
	m.Kind = d.kind()
	m.Meta = d.bytes16(MaxMetaLen, "meta")
	d.checkSize(m.Kind, m.Size)
}

// Range is a byte range [Off, Off+Len) of a file.
type Range struct{ Off, Len uint64 }

// UploadReady status values.
const (
	ReadySend      uint8 = 0 // send the Missing ranges
	ReadyUnchanged uint8 = 1 // the server holds this content already; send nothing
	ReadyJoined    uint8 = 2 // answer to UploadJoin: chunks of the upload may go on xfer too
)

// UploadReady accepts an UploadRequest.
//
//	req      uint32
//	xfer     uint32: session-local transfer number used by chunk frames
//	uploadID [16]byte: the upload's durable ID, bound into every chunk
//	status   uint8: ReadySend, ReadyUnchanged or ReadyJoined
//	version  uint32: with ReadyUnchanged, the version that holds the content
//	count    uint16: number of missing ranges, ..MaxRanges
//	ranges   count × (offset uint64, length uint64), ascending, disjoint
type UploadReady struct {
	Req      uint32
	Xfer     uint32
	UploadID [16]byte
	Status   uint8
	Version  uint32
	Missing  []Range
}

func (*UploadReady) Type() MsgType { return TypeUploadReady }
func (m *UploadReady) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendU32(b, m.Xfer)
	b = append(b, m.UploadID[:]...)
	b = appendU8(b, m.Status)
	b = appendU32(b, m.Version)
	return appendRanges(b, m.Missing)
}
func (m *UploadReady) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Xfer = d.u32("xfer")
	d.fixed(m.UploadID[:], "uploadID")
	m.Status = d.u8("status")
	if d.err == nil && m.Status > ReadyJoined {
		d.fail(fmt.Errorf("unknown status %d", m.Status), "status")
	}
	m.Version = d.u32("version")
	m.Missing = d.ranges(MaxRanges, false)
}

// appendRanges appends a count and the ranges (see UploadReady).
func appendRanges(b []byte, rs []Range) []byte {
	b = appendU16(b, uint16(len(rs)))
	for _, r := range rs {
		b = appendU64(b, r.Off)
		b = appendU64(b, r.Len)
	}
	return b
}

// ranges reads a count, at most max, and that many ranges: ascending, not
// empty, not overlapping, within MaxFileSize, and with apart set not
// touching either (a RangeSet's canonical form).
func (d *decoder) ranges(max int, apart bool) []Range {
	n := int(d.u16("count"))
	if d.err != nil {
		return nil
	}
	if n > max {
		d.fail(errTooLong, "count")
		return nil
	}
	if len(d.b) < n*16 {
		d.fail(errShort, "ranges")
		return nil
	}
	if n == 0 {
		return nil
	}
	rs := make([]Range, n)
	var end uint64
	for i := range rs {
		r := Range{Off: d.u64("offset"), Len: d.u64("length")}
		if r.Len == 0 || r.Off < end || (apart && i > 0 && r.Off == end) || r.Off > MaxFileSize || r.Len > MaxFileSize-r.Off {
			d.fail(fmt.Errorf("range %d [%d,+%d) empty, overlapping, unordered or out of bounds", i, r.Off, r.Len), "ranges")
			return nil
		}
		end = r.Off + r.Len
		rs[i] = r
	}
	return rs
}

// UploadChecksum carries the server's checksums over the reassembled file.
//
//	xfer   uint32
//	crc    uint32: cksum value
//	sha256 [32]byte
type UploadChecksum struct {
	Xfer   uint32
	CRC    uint32
	SHA256 [32]byte
}

func (*UploadChecksum) Type() MsgType { return TypeUploadChecksum }
func (m *UploadChecksum) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Xfer)
	b = appendU32(b, m.CRC)
	return append(b, m.SHA256[:]...)
}
func (m *UploadChecksum) decode(d *decoder) {
	m.Xfer = d.u32("xfer")
	m.CRC = d.u32("crc")
	d.fixed(m.SHA256[:], "sha256")
}

// UploadCommit tells the server the checksums matched: store the file.
//
//	xfer uint32
type UploadCommit struct{ Xfer uint32 }

func (*UploadCommit) Type() MsgType                   { return TypeUploadCommit }
func (m *UploadCommit) appendPayload(b []byte) []byte { return appendU32(b, m.Xfer) }
func (m *UploadCommit) decode(d *decoder)             { m.Xfer = d.u32("xfer") }

// UploadAbort tells the server to discard a transfer (checksum mismatch, or
// the client gave up). The server answers UploadResult with ResultDiscarded.
//
//	xfer uint32
type UploadAbort struct{ Xfer uint32 }

func (*UploadAbort) Type() MsgType                   { return TypeUploadAbort }
func (m *UploadAbort) appendPayload(b []byte) []byte { return appendU32(b, m.Xfer) }
func (m *UploadAbort) decode(d *decoder)             { m.Xfer = d.u32("xfer") }

// UploadJoin asks to carry chunks of an upload that another session of
// the same client opened, so one file's chunks can travel over several
// connections (qbackup send --connections). The server answers with an
// UploadReady (ReadyJoined) giving a transfer number of this session for
// the upload and the ranges still missing; checksum, commit and abort
// stay with the session that opened it.
//
//	req      uint32
//	uploadID [16]byte: from the UploadReady of the opening session
type UploadJoin struct {
	Req      uint32
	UploadID [16]byte
}

func (*UploadJoin) Type() MsgType { return TypeUploadJoin }
func (m *UploadJoin) appendPayload(b []byte) []byte {
	return append(appendU32(b, m.Req), m.UploadID[:]...)
}
func (m *UploadJoin) decode(d *decoder) {
	m.Req = d.u32("req")
	d.fixed(m.UploadID[:], "uploadID")
}

// UploadResult status values.
const (
	ResultStored    uint8 = 0 // stored as a new version
	ResultIdentical uint8 = 1 // identical to the latest version; no new version
	ResultDiscarded uint8 = 2 // the upload was discarded
)

// UploadResult ends a transfer.
//
//	xfer     uint32
//	status   uint8
//	version  uint32: the version that holds the content (0 if discarded)
//	storedAt int64: Unix nanoseconds
type UploadResult struct {
	Xfer     uint32
	Status   uint8
	Version  uint32
	StoredAt int64
}

func (*UploadResult) Type() MsgType { return TypeUploadResult }
func (m *UploadResult) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Xfer)
	b = appendU8(b, m.Status)
	b = appendU32(b, m.Version)
	return appendU64(b, uint64(m.StoredAt))
}
func (m *UploadResult) decode(d *decoder) {
	m.Xfer = d.u32("xfer")
	m.Status = d.u8("status")
	if d.err == nil && m.Status > ResultDiscarded {
		d.fail(fmt.Errorf("unknown status %d", m.Status), "status")
	}
	m.Version = d.u32("version")
	m.StoredAt = int64(d.u64("storedAt"))
}

// List flags.
const (
	// ListAllVersions lists every version rather than the latest of each name.
	ListAllVersions uint8 = 1 << 0
)

// ListRequest asks for the client's stored files whose names equal Prefix
// or lie below it ("" lists all). The server answers ListEntry* then ListEnd.
//
//	req    uint32
//	prefix uint16 length + bytes, ..MaxNameLen
//	flags  uint8
type ListRequest struct {
	Req    uint32
	Prefix string
	Flags  uint8
}

func (*ListRequest) Type() MsgType { return TypeListRequest }
func (m *ListRequest) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendString16(b, m.Prefix)
	return appendU8(b, m.Flags)
}
func (m *ListRequest) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Prefix = d.name16("prefix")
	m.Flags = d.u8("flags")
}

// ListEntry flags.
const (
	// EntryVerified says the client confirmed the checksums at upload.
	EntryVerified uint8 = 1 << 0
	// EntryDamaged says the stored copy no longer matches its checksums
	// (found by the server's check); the version cannot be restored.
	EntryDamaged uint8 = 1 << 1
)

// ListEntry describes one stored version.
//
//	req      uint32
//	name     uint16 length + bytes
//	version  uint32
//	versions uint32: how many versions the name has
//	size     uint64
//	modTime  int64: Unix nanoseconds
//	mode     uint32: ..ModeMask
//	crc      uint32
//	sha256   [32]byte
//	storedAt int64: Unix nanoseconds
//	flags    uint8: EntryVerified, EntryDamaged; other bits 0
//	kind     uint8: a Kind
//	meta     uint16 length + metadata record, ..MaxMetaLen
type ListEntry struct {
	Req      uint32
	Name     string
	Version  uint32
	Versions uint32
	Size     uint64
	ModTime  int64
	Mode     uint32
	CRC      uint32
	SHA256   [32]byte
	StoredAt int64
	Verified bool
	Damaged  bool
	Kind     Kind
	Meta     []byte
}

func (*ListEntry) Type() MsgType { return TypeListEntry }
func (m *ListEntry) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendString16(b, m.Name)
	b = appendU32(b, m.Version)
	b = appendU32(b, m.Versions)
	b = appendU64(b, m.Size)
	b = appendU64(b, uint64(m.ModTime))
	b = appendU32(b, m.Mode)
	b = appendU32(b, m.CRC)
	b = append(b, m.SHA256[:]...)
	b = appendU64(b, uint64(m.StoredAt))
	var flags uint8
	if m.Verified {
		flags |= EntryVerified
	}
	if m.Damaged {
		flags |= EntryDamaged
	}
	b = appendU8(b, flags)
	b = appendU8(b, uint8(m.Kind))
	return appendBytes16(b, m.Meta)
}
func (m *ListEntry) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Name = d.name16("name")
	m.Version = d.u32("version")
	m.Versions = d.u32("versions")
	m.Size = d.u64("size")
	m.ModTime = int64(d.u64("modTime"))
	m.Mode = d.mode()
	m.CRC = d.u32("crc")
	d.fixed(m.SHA256[:], "sha256")
	m.StoredAt = int64(d.u64("storedAt"))
	flags := d.u8("flags")
	if d.err == nil && flags&^(EntryVerified|EntryDamaged) != 0 {
		d.fail(fmt.Errorf("unknown bits %#x", flags), "flags")
	}
	m.Verified = flags&EntryVerified != 0
	m.Damaged = flags&EntryDamaged != 0
	m.Kind = d.kind()
	m.Meta = d.bytes16(MaxMetaLen, "meta")
	d.checkSize(m.Kind, m.Size)
}

// ListEnd ends a listing.
//
//	req   uint32
//	count uint32: entries sent
type ListEnd struct {
	Req   uint32
	Count uint32
}

func (*ListEnd) Type() MsgType { return TypeListEnd }
func (m *ListEnd) appendPayload(b []byte) []byte {
	return appendU32(appendU32(b, m.Req), m.Count)
}
func (m *ListEnd) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Count = d.u32("count")
}

// MinPace is the lowest pacing rate a Pace may ask for, in bytes per
// second (100 kbit/s): below it a connection's own keep-alives and
// acknowledgements would fill the rate.
const MinPace = 12_500

// Pace asks the server to send this connection's packets at most at rate
// bytes per second, from now on (restore --limit); 0 lifts the limit. The
// server answers Paced, or Error when it cannot pace (CodeUnsupported).
//
//	req  uint32
//	rate uint64: 0, or MinPace and above
type Pace struct {
	Req  uint32
	Rate uint64
}

func (*Pace) Type() MsgType { return TypePace }
func (m *Pace) appendPayload(b []byte) []byte {
	return appendU64(appendU32(b, m.Req), m.Rate)
}
func (m *Pace) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Rate = d.u64("rate")
	if m.Rate != 0 && m.Rate < MinPace {
		d.fail(fmt.Errorf("%d bytes per second is below the least, %d", m.Rate, MinPace), "rate")
	}
}

// Paced answers a Pace: the rate the server now sends at most, in bytes
// per second (0: no limit).
//
//	req  uint32
//	rate uint64
type Paced struct {
	Req  uint32
	Rate uint64
}

func (*Paced) Type() MsgType { return TypePaced }
func (m *Paced) appendPayload(b []byte) []byte {
	return appendU64(appendU32(b, m.Req), m.Rate)
}
func (m *Paced) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Rate = d.u64("rate")
}

// RestoreRequest asks for a stored file. The server answers RestoreReady,
// then sends the file's chunks on its own data streams.
//
//	req     uint32
//	name    uint16 length + bytes, ..MaxNameLen
//	version uint32: 0 for the latest
type RestoreRequest struct {
	Req     uint32
	Name    string
	Version uint32
}

func (*RestoreRequest) Type() MsgType { return TypeRestoreRequest }
func (m *RestoreRequest) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendString16(b, m.Name)
	return appendU32(b, m.Version)
}
func (m *RestoreRequest) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Name = d.name16("name")
	m.Version = d.u32("version")
}

// RestoreResume asks for the rest of a stored file, of which the client
// has the Have ranges from an interrupted restore: the server answers as to
// a RestoreRequest, then sends only the chunks outside them. Version and
// SHA256 are those of the RestoreReady that began it, so that the client
// never joins the bytes of two versions.
//
//	req     uint32
//	name    uint16 length + bytes, ..MaxNameLen
//	version uint32: not 0
//	sha256  [32]byte
//	count   uint16: ranges the client has, ..MaxResumeRanges
//	ranges  count × (offset uint64, length uint64): ascending, not
//	        touching or overlapping, not empty, ending by MaxFileSize
type RestoreResume struct {
	Req     uint32
	Name    string
	Version uint32
	SHA256  [32]byte
	Have    []Range
}

func (*RestoreResume) Type() MsgType { return TypeRestoreResume }
func (m *RestoreResume) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendString16(b, m.Name)
	b = appendU32(b, m.Version)
	b = append(b, m.SHA256[:]...)
	return appendRanges(b, m.Have)
}
func (m *RestoreResume) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Name = d.name16("name")
	m.Version = d.u32("version")
	if d.err == nil && m.Version == 0 {
		d.fail(errors.New("0: a resume names its version"), "version")
	}
	d.fixed(m.SHA256[:], "sha256")
	m.Have = d.ranges(MaxResumeRanges, true)
}

// RestoreReady describes the entry about to be sent.
//
//	req        uint32
//	xfer       uint32
//	transferID [16]byte: random, bound into every chunk
//	name       uint16 length + bytes
//	version    uint32
//	size       uint64
//	modTime    int64
//	mode       uint32: ..ModeMask
//	crc        uint32: the stored cksum value
//	sha256     [32]byte
//	kind       uint8: a Kind
//	meta       uint16 length + metadata record, ..MaxMetaLen
type RestoreReady struct {
	Req        uint32
	Xfer       uint32
	TransferID [16]byte
	Name       string
	Version    uint32
	Size       uint64
	ModTime    int64
	Mode       uint32
	CRC        uint32
	SHA256     [32]byte
	Kind       Kind
	Meta       []byte
}

func (*RestoreReady) Type() MsgType { return TypeRestoreReady }
func (m *RestoreReady) appendPayload(b []byte) []byte {
	b = appendU32(b, m.Req)
	b = appendU32(b, m.Xfer)
	b = append(b, m.TransferID[:]...)
	b = appendString16(b, m.Name)
	b = appendU32(b, m.Version)
	b = appendU64(b, m.Size)
	b = appendU64(b, uint64(m.ModTime))
	b = appendU32(b, m.Mode)
	b = appendU32(b, m.CRC)
	b = append(b, m.SHA256[:]...)
	b = appendU8(b, uint8(m.Kind))
	return appendBytes16(b, m.Meta)
}
func (m *RestoreReady) decode(d *decoder) {
	m.Req = d.u32("req")
	m.Xfer = d.u32("xfer")
	d.fixed(m.TransferID[:], "transferID")
	m.Name = d.name16("name")
	m.Version = d.u32("version")
	m.Size = d.u64("size")
	m.ModTime = int64(d.u64("modTime"))
	m.Mode = d.mode()
	m.CRC = d.u32("crc")
	d.fixed(m.SHA256[:], "sha256")
	m.Kind = d.kind()
	m.Meta = d.bytes16(MaxMetaLen, "meta")
	d.checkSize(m.Kind, m.Size)
}

// RestoreDone status values.
const (
	DoneVerified uint8 = 0 // received, and the checksums matched
	DoneFailed   uint8 = 1 // given up: cancelled, or a local failure
	DoneMismatch uint8 = 2 // every byte received, but the checksums did not match
)

// RestoreDone tells the server the client has finished with a restore
// transfer (received and verified, or given up) so it can release it.
// DoneMismatch tells the server its copy may be damaged.
//
//	xfer   uint32
//	status uint8: DoneVerified, DoneFailed or DoneMismatch
type RestoreDone struct {
	Xfer   uint32
	Status uint8
}

func (*RestoreDone) Type() MsgType { return TypeRestoreDone }
func (m *RestoreDone) appendPayload(b []byte) []byte {
	return appendU8(appendU32(b, m.Xfer), m.Status)
}
func (m *RestoreDone) decode(d *decoder) {
	m.Xfer = d.u32("xfer")
	m.Status = d.u8("status")
	if d.err == nil && m.Status > DoneMismatch {
		d.fail(fmt.Errorf("unknown status %d", m.Status), "status")
	}
}

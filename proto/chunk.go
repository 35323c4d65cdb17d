package proto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
)

// StreamTypeChunks is the first byte of every unidirectional data stream.
// The rest of the stream is a sequence of chunk frames.
const StreamTypeChunks byte = 0x43

// ChunkHeaderLen is the size of a chunk frame header.
const ChunkHeaderLen = 4 + 8 + 4 + NonceSize

// NonceSize is the AES-GCM nonce size.
const NonceSize = 12

// TagSize is the AES-GCM tag size that follows every chunk's ciphertext.
const TagSize = 16

// KeySize is the size of a session key (AES-256).
const KeySize = 32

// Direction says which end sealed a chunk. It is the first byte of every
// nonce and is bound into the additional data, so a chunk can never be
// reflected back to the end that sent it.
type Direction byte

// Directions.
const (
	ClientToServer Direction = 'C'
	ServerToClient Direction = 'S'
)

// ChunkHeader precedes a chunk's ciphertext on a data stream.
//
//	xfer   uint32: the transfer number from UploadReady or RestoreReady
//	offset uint64: where the plaintext belongs in the file
//	length uint32: plaintext length, 1..chunk size
//	nonce  [12]byte: direction (1 byte), 3 zero bytes, uint64 counter
//
// length+TagSize bytes of AES-256-GCM ciphertext follow.
type ChunkHeader struct {
	Xfer   uint32
	Offset uint64
	Length uint32
	Nonce  [NonceSize]byte
}

// AppendChunkHeader appends h's wire form.
func AppendChunkHeader(b []byte, h *ChunkHeader) []byte {
	b = appendU32(b, h.Xfer)
	b = appendU64(b, h.Offset)
	b = appendU32(b, h.Length)
	return append(b, h.Nonce[:]...)
}

// ParseChunkHeader decodes a chunk header and checks that its length is in
// 1..maxLen and its range lies within MaxFileSize.
func ParseChunkHeader(b []byte, maxLen uint32) (ChunkHeader, error) {
	var h ChunkHeader
	if len(b) != ChunkHeaderLen {
		return h, &ParseError{What: "chunk header", Err: errShort}
	}
	h.Xfer = binary.BigEndian.Uint32(b[0:])
	h.Offset = binary.BigEndian.Uint64(b[4:])
	h.Length = binary.BigEndian.Uint32(b[12:])
	copy(h.Nonce[:], b[16:])
	if h.Length == 0 || h.Length > maxLen {
		return h, &ParseError{What: "chunk header", Err: fmt.Errorf("length %d not in 1..%d", h.Length, maxLen)}
	}
	if h.Offset > MaxFileSize-uint64(h.Length) {
		return h, &ParseError{What: "chunk header", Err: fmt.Errorf("range [%d,+%d) beyond the maximum file size", h.Offset, h.Length)}
	}
	return h, nil
}

// ChunkReader reads chunk frames from a data stream whose type byte has
// already been consumed.
type ChunkReader struct {
	// Buffers, if set, lends the buffer for each frame's payload, which
	// the reader gives back at the next call to Next or at Close; a nil
	// Buffers means one buffer of maxLen+TagSize bytes owned by the
	// reader, allocated on first use.
	Buffers BufferSource

	r      io.Reader
	maxLen uint32
	hdr    [ChunkHeaderLen]byte
	buf    []byte
	lent   []byte      // from Buffers, until the next frame
	header ChunkHeader // the header ReadChunkFrames hands to its handle
}

// A BufferSource lends buffers for chunk payloads. A server uses one to
// bound the chunk data it holds across all its connections: Get may wait
// until enough is given back. An error from Get ends the stream.
type BufferSource interface {
	Get(n int) ([]byte, error) // a buffer of length n
	Put(b []byte)              // b came from Get and is no longer used
}

// NewChunkReader returns a reader of chunk frames whose plaintext is at most
// maxLen bytes.
func NewChunkReader(r io.Reader, maxLen uint32) *ChunkReader {
	return &ChunkReader{r: r, maxLen: maxLen}
}

// Next reads the next frame. The ciphertext is valid until the next call. It
// returns io.EOF only when the stream ended cleanly between frames.
func (cr *ChunkReader) Next() (ChunkHeader, []byte, error) {
	cr.Close()
	if _, err := io.ReadFull(cr.r, cr.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return ChunkHeader{}, nil, &ParseError{What: "chunk header", Err: errShort}
		}
		return ChunkHeader{}, nil, err
	}
	h, err := ParseChunkHeader(cr.hdr[:], cr.maxLen)
	if err != nil {
		return h, nil, err
	}
	n := int(h.Length) + TagSize
	var ct []byte
	if cr.Buffers != nil {
		if ct, err = cr.Buffers.Get(n); err != nil {
			return h, nil, err
		}
		cr.lent = ct
	} else {
		if cap(cr.buf) < n {
			cr.buf = make([]byte, int(cr.maxLen)+TagSize)
		}
		ct = cr.buf[:n]
	}
	if _, err := io.ReadFull(cr.r, ct); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return h, nil, &ParseError{What: "chunk payload", Err: errShort}
		}
		return h, nil, err
	}
	return h, ct, nil
}

// Detach takes the buffer Buffers lent for the last frame out of the
// reader's hands, so that the reader no longer gives it back: whoever
// detached it gives it back to Buffers once done with it. It returns nil
// if no buffer is lent (Buffers is nil, or it was given back already).
func (cr *ChunkReader) Detach() []byte {
	b := cr.lent
	cr.lent = nil
	return b
}

// Close gives back a buffer lent by Buffers. The reader may still be used;
// Close only ends the use of the last frame's ciphertext.
func (cr *ChunkReader) Close() {
	if cr.lent != nil {
		cr.Buffers.Put(cr.lent)
		cr.lent = nil
	}
}

// SessionKey is the symmetric key of one session.
type SessionKey [KeySize]byte

// NewSessionKey returns a fresh random session key.
func NewSessionKey() (SessionKey, error) {
	var k SessionKey
	_, err := rand.Read(k[:])
	return k, err
}

const aadLabel = "qbackup/1 chunk"

// aadLen is the length of a chunk's additional data: label, direction,
// transfer ID, offset and length.
const aadLen = len(aadLabel) + 1 + 16 + 8 + 4

// chunkAAD builds the additional data: label, direction, transfer ID,
// offset and length.
func chunkAAD(dst *[aadLen]byte, dir Direction, id *[16]byte, off uint64, n uint32) []byte {
	b := dst[:0]
	b = append(b, aadLabel...)
	b = append(b, byte(dir))
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, n)
}

// aeadArgs holds the nonce and additional data of one Seal or Open call.
// Slices passed through the cipher.AEAD interface escape, so arrays on the
// stack would move to the heap on every chunk; these come from a pool.
type aeadArgs struct {
	nonce [NonceSize]byte
	aad   [aadLen]byte
}

var aeadArgsPool = sync.Pool{New: func() any { return new(aeadArgs) }}

// ErrNonceExhausted is returned by Sealer.Seal after 2^64-1 chunks.
var ErrNonceExhausted = errors.New("proto: nonce counter exhausted")

// Sealer encrypts the chunks one end sends in a session. Nonces come from a
// counter, so a nonce is never reused under the session key, resends
// included. It is safe for concurrent use.
type Sealer struct {
	aead    cipher.AEAD
	dir     Direction
	counter atomic.Uint64
}

// NewSealer returns a sealer for chunks travelling in direction dir.
func NewSealer(key *SessionKey, dir Direction) (*Sealer, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead, dir: dir}, nil
}

func newAEAD(key *SessionKey) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// AppendFrame seals plaintext as the chunk at offset off of transfer xfer
// (whose durable ID is id) and appends the whole frame, header and
// ciphertext, to dst.
func (s *Sealer) AppendFrame(dst []byte, xfer uint32, id *[16]byte, off uint64, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 || len(plaintext) > MaxChunkSize {
		return dst, fmt.Errorf("proto: chunk of %d bytes not in 1..%d", len(plaintext), MaxChunkSize)
	}
	var ctr uint64
	for {
		old := s.counter.Load()
		if old == math.MaxUint64 {
			return dst, ErrNonceExhausted
		}
		if s.counter.CompareAndSwap(old, old+1) {
			ctr = old + 1
			break
		}
	}
	h := ChunkHeader{Xfer: xfer, Offset: off, Length: uint32(len(plaintext))}
	h.Nonce[0] = byte(s.dir)
	binary.BigEndian.PutUint64(h.Nonce[4:], ctr)
	dst = AppendChunkHeader(dst, &h)
	args := aeadArgsPool.Get().(*aeadArgs)
	defer aeadArgsPool.Put(args)
	args.nonce = h.Nonce
	return s.aead.Seal(dst, args.nonce[:], plaintext, chunkAAD(&args.aad, s.dir, id, off, h.Length)), nil
}

// Opener decrypts the chunks one end receives in a session. It is safe for
// concurrent use.
type Opener struct {
	aead cipher.AEAD
	dir  Direction
}

// NewOpener returns an opener for chunks travelling in direction dir.
func NewOpener(key *SessionKey, dir Direction) (*Opener, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Opener{aead: aead, dir: dir}, nil
}

// ErrChunkAuth is returned by Opener.Open for a chunk that fails
// authentication: wrong key, direction, transfer, offset or length, or
// tampered bytes.
var ErrChunkAuth = &Error{Code: CodeBadChunk, Message: "chunk failed authentication"}

// Open authenticates and decrypts a chunk of the transfer whose durable ID
// is id, appending the plaintext to dst (which may be ciphertext[:0]).
func (o *Opener) Open(dst []byte, h *ChunkHeader, id *[16]byte, ciphertext []byte) ([]byte, error) {
	if h.Nonce[0] != byte(o.dir) || h.Nonce[1]|h.Nonce[2]|h.Nonce[3] != 0 {
		return nil, ErrChunkAuth
	}
	if len(ciphertext) != int(h.Length)+TagSize {
		return nil, ErrChunkAuth
	}
	args := aeadArgsPool.Get().(*aeadArgs)
	defer aeadArgsPool.Put(args)
	args.nonce = h.Nonce
	p, err := o.aead.Open(dst, args.nonce[:], ciphertext, chunkAAD(&args.aad, o.dir, id, h.Offset, h.Length))
	if err != nil {
		return nil, ErrChunkAuth
	}
	return p, nil
}

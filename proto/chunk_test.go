package proto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/qbackup/qbackup/proto"
)

func sessionKey(seed byte) (k proto.SessionKey) {
	copy(k[:], pattern(proto.KeySize, seed))
	return k
}

func newSealer(t testing.TB, key proto.SessionKey, dir proto.Direction) *proto.Sealer {
	t.Helper()
	s, err := proto.NewSealer(&key, dir)
	if err != nil {
		t.Fatalf("NewSealer error = %v, want nil", err)
	}
	return s
}

func newOpener(t testing.TB, key proto.SessionKey, dir proto.Direction) *proto.Opener {
	t.Helper()
	o, err := proto.NewOpener(&key, dir)
	if err != nil {
		t.Fatalf("NewOpener error = %v, want nil", err)
	}
	return o
}

func sealFrame(t testing.TB, s *proto.Sealer, xfer uint32, id [16]byte, off uint64, pt []byte) []byte {
	t.Helper()
	frame, err := s.AppendFrame(nil, xfer, &id, off, pt)
	if err != nil {
		t.Fatalf("AppendFrame(%d bytes at %d) error = %v, want nil", len(pt), off, err)
	}
	return frame
}

// splitFrame parses a sealed frame's header and returns it with a copy of
// the ciphertext.
func splitFrame(t testing.TB, frame []byte) (proto.ChunkHeader, []byte) {
	t.Helper()
	h, err := proto.ParseChunkHeader(frame[:proto.ChunkHeaderLen], proto.MaxChunkSize)
	if err != nil {
		t.Fatalf("ParseChunkHeader error = %v, want nil", err)
	}
	return h, append([]byte(nil), frame[proto.ChunkHeaderLen:]...)
}

func nonceCounter(h *proto.ChunkHeader) uint64 { return binary.BigEndian.Uint64(h.Nonce[4:]) }

func TestChunkRoundTrip(t *testing.T) {
	key := sessionKey(1)
	id := id16(2)
	for _, dir := range []proto.Direction{proto.ClientToServer, proto.ServerToClient} {
		for _, size := range []int{1, 1000, proto.MaxChunkSize} {
			t.Run(fmt.Sprintf("%c/%d", dir, size), func(t *testing.T) {
				s := newSealer(t, key, dir)
				o := newOpener(t, key, dir)
				pt := pattern(size, byte(size))
				const xfer, off = 7, 1 << 40
				frame := sealFrame(t, s, xfer, id, off, pt)
				if got, want := len(frame), proto.ChunkHeaderLen+size+proto.TagSize; got != want {
					t.Errorf("frame length = %d, want %d", got, want)
				}
				cr := proto.NewChunkReader(bytes.NewReader(frame), proto.MaxChunkSize)
				h, ct, err := cr.Next()
				if err != nil {
					t.Fatalf("Next error = %v, want nil", err)
				}
				if got, want := [3]uint64{uint64(h.Xfer), h.Offset, uint64(h.Length)}, [3]uint64{xfer, off, uint64(size)}; got != want {
					t.Errorf("header (xfer, offset, length) = %v, want %v", got, want)
				}
				if got, want := h.Nonce[0], byte(dir); got != want {
					t.Errorf("nonce[0] = %q, want %q", got, want)
				}
				if got, want := len(ct), size+proto.TagSize; got != want {
					t.Errorf("ciphertext length = %d, want %d", got, want)
				}
				if bytes.Contains(ct, pt[:min(size, 64)]) && size >= 16 {
					t.Errorf("ciphertext contains the plaintext")
				}
				got, err := o.Open(ct[:0], &h, &id, ct) // in place, as documented
				if err != nil {
					t.Fatalf("Open error = %v, want nil", err)
				}
				if !bytes.Equal(got, pt) {
					t.Errorf("Open = %d bytes, want the %d-byte plaintext", len(got), len(pt))
				}
				if _, _, err := cr.Next(); err != io.EOF {
					t.Errorf("Next at end error = %v, want io.EOF", err)
				}
			})
		}
	}
}

func TestChunkStream(t *testing.T) {
	key := sessionKey(3)
	id := id16(4)
	s := newSealer(t, key, proto.ServerToClient)
	o := newOpener(t, key, proto.ServerToClient)
	sizes := []int{1, 1000, 4096, proto.MaxChunkSize, 7, proto.MaxChunkSize - 1}
	var stream []byte
	var pts [][]byte
	var off uint64
	var offs []uint64
	for i, n := range sizes {
		pt := pattern(n, byte(i))
		var err error
		if stream, err = s.AppendFrame(stream, uint32(i), &id, off, pt); err != nil {
			t.Fatalf("AppendFrame %d error = %v, want nil", i, err)
		}
		pts = append(pts, pt)
		offs = append(offs, off)
		off += uint64(n)
	}
	for _, rd := range readers {
		t.Run(rd.name, func(t *testing.T) {
			cr := proto.NewChunkReader(rd.wrap(bytes.NewReader(stream)), proto.MaxChunkSize)
			var lastCounter uint64
			for i := range sizes {
				h, ct, err := cr.Next()
				if err != nil {
					t.Fatalf("Next %d error = %v, want nil", i, err)
				}
				if got, want := [3]uint64{uint64(h.Xfer), h.Offset, uint64(h.Length)}, [3]uint64{uint64(i), offs[i], uint64(sizes[i])}; got != want {
					t.Errorf("frame %d header (xfer, offset, length) = %v, want %v", i, got, want)
				}
				if c := nonceCounter(&h); c <= lastCounter {
					t.Errorf("frame %d nonce counter = %d, want > %d", i, c, lastCounter)
				}
				lastCounter = nonceCounter(&h)
				got, err := o.Open(nil, &h, &id, ct)
				if err != nil {
					t.Fatalf("Open %d error = %v, want nil", i, err)
				}
				if !bytes.Equal(got, pts[i]) {
					t.Errorf("Open %d = %d bytes, want the %d-byte plaintext", i, len(got), len(pts[i]))
				}
			}
			for i := 0; i < 2; i++ {
				if _, _, err := cr.Next(); err != io.EOF {
					t.Errorf("Next at end error = %v, want io.EOF", err)
				}
			}
		})
	}
}

func TestChunkHeaderRoundTrip(t *testing.T) {
	tests := []proto.ChunkHeader{
		{Xfer: 1, Offset: 0, Length: 1},
		{Xfer: math.MaxUint32, Offset: proto.MaxFileSize - proto.MaxChunkSize, Length: proto.MaxChunkSize, Nonce: [12]byte{'C', 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}},
		{Xfer: 0, Offset: 12345, Length: 999, Nonce: [12]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
	}
	for _, want := range tests {
		b := proto.AppendChunkHeader([]byte("x"), &want)
		if got := len(b); got != 1+proto.ChunkHeaderLen {
			t.Errorf("len(AppendChunkHeader(%+v)) = %d, want %d", want, got, 1+proto.ChunkHeaderLen)
		}
		got, err := proto.ParseChunkHeader(b[1:], proto.MaxChunkSize)
		if err != nil {
			t.Errorf("ParseChunkHeader(%+v) error = %v, want nil", want, err)
		}
		if got != want {
			t.Errorf("ParseChunkHeader(AppendChunkHeader(%+v)) = %+v, want %+v", want, got, want)
		}
	}
}

func TestParseChunkHeader(t *testing.T) {
	hdr := func(off uint64, n uint32) []byte {
		return proto.AppendChunkHeader(nil, &proto.ChunkHeader{Xfer: 1, Offset: off, Length: n, Nonce: [12]byte{'C'}})
	}
	tests := []struct {
		name    string
		b       []byte
		maxLen  uint32
		wantErr bool
	}{
		{"min", hdr(0, 1), 1000, false},
		{"maxLen", hdr(0, 1000), 1000, false},
		{"length0", hdr(0, 0), 1000, true},
		{"overMaxLen", hdr(0, 1001), 1000, true},
		{"length32", hdr(0, math.MaxUint32), 1000, true},
		{"maxLen0", hdr(0, 1), 0, true},
		{"maxChunk", hdr(0, proto.MaxChunkSize), proto.MaxChunkSize, false},
		{"overMaxChunk", hdr(0, proto.MaxChunkSize+1), proto.MaxChunkSize, true},
		{"endsAtMaxFileSize", hdr(proto.MaxFileSize-1000, 1000), 1000, false},
		{"lastByte", hdr(proto.MaxFileSize-1, 1), 1000, false},
		{"endsPastMaxFileSize", hdr(proto.MaxFileSize-999, 1000), 1000, true},
		{"atMaxFileSize", hdr(proto.MaxFileSize, 1), 1000, true},
		{"offset64", hdr(math.MaxUint64, 1), 1000, true},
		{"offsetWraps", hdr(math.MaxUint64-10, 100), 1000, true},
		{"short", hdr(0, 1)[:proto.ChunkHeaderLen-1], 1000, true},
		{"long", append(hdr(0, 1), 0), 1000, true},
		{"empty", nil, 1000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proto.ParseChunkHeader(tt.b, tt.maxLen)
			if !tt.wantErr {
				if err != nil {
					t.Errorf("ParseChunkHeader error = %v, want nil", err)
				}
				return
			}
			checkParseError(t, "ParseChunkHeader", err, "chunk header")
		})
	}
}

// TestChunkReaderRejectsBeforePayload checks that a bad header is refused
// without reading (or allocating for) the payload.
func TestChunkReaderRejectsBeforePayload(t *testing.T) {
	tests := []struct {
		name   string
		h      proto.ChunkHeader
		maxLen uint32
	}{
		{"overMaxLen", proto.ChunkHeader{Length: 1001}, 1000},
		{"length0", proto.ChunkHeader{Length: 0}, 1000},
		{"huge", proto.ChunkHeader{Length: math.MaxUint32}, proto.MaxChunkSize},
		{"beyondMaxFileSize", proto.ChunkHeader{Offset: proto.MaxFileSize, Length: 1}, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := proto.NewChunkReader(&headerOnlyReader{t: t, hdr: proto.AppendChunkHeader(nil, &tt.h)}, tt.maxLen)
			_, ct, err := cr.Next()
			if ct != nil {
				t.Errorf("Next ciphertext = %d bytes, want nil", len(ct))
			}
			checkParseError(t, "Next", err, "chunk header")
		})
	}
}

func TestChunkReaderTruncated(t *testing.T) {
	s := newSealer(t, sessionKey(5), proto.ClientToServer)
	id := id16(6)
	a := sealFrame(t, s, 1, id, 0, pattern(10, 1))
	b := sealFrame(t, s, 1, id, 10, pattern(3, 2))
	stream := append(append([]byte(nil), a...), b...)
	for _, rd := range readers {
		for cut := 0; cut <= len(stream); cut++ {
			wantFrames := 0
			if cut >= len(a) {
				wantFrames++
			}
			if cut == len(stream) {
				wantFrames++
			}
			atBoundary := cut == 0 || cut == len(a) || cut == len(stream)

			cr := proto.NewChunkReader(rd.wrap(bytes.NewReader(stream[:cut])), 100)
			var frames int
			var err error
			for {
				if _, _, err = cr.Next(); err != nil {
					break
				}
				frames++
				if frames > 2 {
					t.Fatalf("%s: cut %d: Next returned frame %d, want at most 2", rd.name, cut, frames)
				}
			}
			if frames != wantFrames {
				t.Errorf("%s: cut %d: frames read = %d, want %d", rd.name, cut, frames, wantFrames)
			}
			if atBoundary {
				if err != io.EOF {
					t.Errorf("%s: cut %d (frame boundary): Next error = %v, want io.EOF", rd.name, cut, err)
				}
			} else {
				checkParseError(t, fmt.Sprintf("%s: cut %d: Next", rd.name, cut), err, "")
			}
		}
	}
}

func TestChunkReaderReadError(t *testing.T) {
	errBoom := errors.New("boom")
	frame := sealFrame(t, newSealer(t, sessionKey(5), proto.ClientToServer), 1, id16(6), 0, pattern(10, 1))
	for _, cut := range []int{0, 1, proto.ChunkHeaderLen - 1, proto.ChunkHeaderLen, proto.ChunkHeaderLen + 1, len(frame) - 1} {
		r := io.MultiReader(bytes.NewReader(frame[:cut]), iotest.ErrReader(errBoom))
		_, ct, err := proto.NewChunkReader(r, 100).Next()
		if ct != nil {
			t.Errorf("Next with error after %d bytes: ciphertext = %d bytes, want nil", cut, len(ct))
		}
		if !errors.Is(err, errBoom) {
			t.Errorf("Next with error after %d bytes: error = %v, want %v", cut, err, errBoom)
		}
	}
}

func TestOpenRejects(t *testing.T) {
	key := sessionKey(7)
	id := id16(8)
	pt := pattern(100, 9)
	frame := sealFrame(t, newSealer(t, key, proto.ClientToServer), 3, id, 4096, pt)

	type mutation func(h *proto.ChunkHeader, ct []byte) []byte
	keep := func(h *proto.ChunkHeader, ct []byte) []byte { return ct }
	flip := func(i int) mutation {
		return func(h *proto.ChunkHeader, ct []byte) []byte {
			if i < 0 {
				i += len(ct)
			}
			ct[i] ^= 0x01
			return ct
		}
	}
	nonce := func(i int, v byte) mutation {
		return func(h *proto.ChunkHeader, ct []byte) []byte { h.Nonce[i] = v; return ct }
	}
	tests := []struct {
		name    string
		key     proto.SessionKey
		dir     proto.Direction
		id      [16]byte
		mutate  mutation
		wantErr bool
	}{
		{"valid", key, proto.ClientToServer, id, keep, false},
		// The transfer number is not authenticated: the receiver binds a
		// frame to its transfer through the transfer's ID.
		{"otherXfer", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Xfer++; return ct }, false},
		{"wrongKey", sessionKey(70), proto.ClientToServer, id, keep, true},
		{"keyOneBit", func() proto.SessionKey { k := key; k[31] ^= 1; return k }(), proto.ClientToServer, id, keep, true},
		{"wrongDirection", key, proto.ServerToClient, id, keep, true},
		{"reflectedNonceRewritten", key, proto.ServerToClient, id, nonce(0, byte(proto.ServerToClient)), true},
		{"nonceDirectionZero", key, proto.ClientToServer, id, nonce(0, 0), true},
		{"wrongTransferID", key, proto.ClientToServer, id16(80), keep, true},
		{"transferIDOneBit", key, proto.ClientToServer, func() [16]byte { x := id; x[15] ^= 1; return x }(), keep, true},
		{"offsetPlus1", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Offset++; return ct }, true},
		{"offsetMinus1", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Offset--; return ct }, true},
		{"offsetHighBit", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Offset ^= 1 << 40; return ct }, true},
		{"lengthPlus1", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Length++; return ct }, true},
		{"lengthMinus1", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Length--; return ct }, true},
		{"lengthMinus1Consistent", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Length--; return ct[1:] }, true},
		{"lengthPlus1Consistent", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Length++; return append(ct, 0) }, true},
		{"flipFirstBit", key, proto.ClientToServer, id, flip(0), true},
		{"flipMiddleBit", key, proto.ClientToServer, id, flip(50), true},
		{"flipLastPlaintextBit", key, proto.ClientToServer, id, flip(99), true},
		{"flipTagBit", key, proto.ClientToServer, id, flip(-1), true},
		{"tagTruncated", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { return ct[:len(ct)-1] }, true},
		{"extraByte", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { return append(ct, 0) }, true},
		{"empty", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { return nil }, true},
		{"nonceByte1", key, proto.ClientToServer, id, nonce(1, 1), true},
		{"nonceByte2", key, proto.ClientToServer, id, nonce(2, 0x80), true},
		{"nonceByte3", key, proto.ClientToServer, id, nonce(3, 0xff), true},
		{"nonceCounterLow", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Nonce[11] ^= 1; return ct }, true},
		{"nonceCounterHigh", key, proto.ClientToServer, id, func(h *proto.ChunkHeader, ct []byte) []byte { h.Nonce[4] ^= 0x80; return ct }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, ct := splitFrame(t, frame)
			ct = tt.mutate(&h, ct)
			got, err := newOpener(t, tt.key, tt.dir).Open(nil, &h, &tt.id, ct)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Open error = %v, want nil", err)
				}
				if !bytes.Equal(got, pt) {
					t.Errorf("Open = %x..., want %x...", got[:min(len(got), 8)], pt[:8])
				}
				return
			}
			if got != nil {
				t.Errorf("Open plaintext = %d bytes, want nil", len(got))
			}
			if !errors.Is(err, proto.ErrChunkAuth) {
				t.Errorf("Open error = %v, want %v", err, proto.ErrChunkAuth)
			}
			if got := proto.CodeOf(err); got != proto.CodeBadChunk {
				t.Errorf("CodeOf(Open error) = %v, want %v", got, proto.CodeBadChunk)
			}
		})
	}
}

func TestSealFreshNonce(t *testing.T) {
	key := sessionKey(10)
	id := id16(11)
	s := newSealer(t, key, proto.ClientToServer)
	o := newOpener(t, key, proto.ClientToServer)
	pt := pattern(64, 12)
	h1, ct1 := splitFrame(t, sealFrame(t, s, 1, id, 0, pt))
	h2, ct2 := splitFrame(t, sealFrame(t, s, 1, id, 0, pt))
	if h1.Nonce == h2.Nonce {
		t.Errorf("nonces of two seals = %x and %x, want different", h1.Nonce, h2.Nonce)
	}
	if bytes.Equal(ct1, ct2) {
		t.Errorf("ciphertexts of two seals of the same plaintext are equal, want different")
	}
	for i, h := range []proto.ChunkHeader{h1, h2} {
		if got, want := h.Nonce[:4], []byte{byte(proto.ClientToServer), 0, 0, 0}; !bytes.Equal(got, want) {
			t.Errorf("seal %d nonce prefix = %x, want %x", i+1, got, want)
		}
		if got, want := nonceCounter(&h), uint64(i+1); got != want {
			t.Errorf("seal %d nonce counter = %d, want %d", i+1, got, want)
		}
	}
	for i, f := range []struct {
		h  proto.ChunkHeader
		ct []byte
	}{{h1, ct1}, {h2, ct2}} {
		got, err := o.Open(nil, &f.h, &id, f.ct)
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("Open(seal %d) = %x, %v, want the plaintext, nil", i+1, got, err)
		}
	}
	// A second sealer with the same key starts its own counter: sessions
	// must never share a key in the same direction.
	s2 := newSealer(t, key, proto.ServerToClient)
	h3, _ := splitFrame(t, sealFrame(t, s2, 1, id, 0, pt))
	if h3.Nonce == h1.Nonce {
		t.Errorf("nonce of the other direction's first seal = %x, want different from %x", h3.Nonce, h1.Nonce)
	}
}

func TestSealConcurrentNonces(t *testing.T) {
	const goroutines, perGoroutine = 8, 1250 // 10000 seals
	s := newSealer(t, sessionKey(13), proto.ServerToClient)
	id := id16(14)
	nonces := make([][]proto.ChunkHeader, goroutines)
	errs := make([]error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := range perGoroutine {
				var err error
				buf, err = s.AppendFrame(buf[:0], uint32(g), &id, uint64(i), []byte{byte(i)})
				if err != nil {
					errs[g] = err
					return
				}
				h, err := proto.ParseChunkHeader(buf[:proto.ChunkHeaderLen], 1)
				if err != nil {
					errs[g] = err
					return
				}
				nonces[g] = append(nonces[g], h)
			}
		}()
	}
	wg.Wait()
	for g, err := range errs {
		if err != nil {
			t.Fatalf("goroutine %d error = %v, want nil", g, err)
		}
	}
	seen := make(map[[proto.NonceSize]byte]bool)
	for _, hs := range nonces {
		for _, h := range hs {
			if seen[h.Nonce] {
				t.Fatalf("nonce %x sealed twice", h.Nonce)
			}
			seen[h.Nonce] = true
			if c := nonceCounter(&h); c < 1 || c > goroutines*perGoroutine {
				t.Errorf("nonce counter = %d, want 1..%d", c, goroutines*perGoroutine)
			}
		}
	}
	if got, want := len(seen), goroutines*perGoroutine; got != want {
		t.Errorf("distinct nonces = %d, want %d", got, want)
	}
}

func TestAppendFrameRejectsSize(t *testing.T) {
	s := newSealer(t, sessionKey(15), proto.ClientToServer)
	id := id16(16)
	dst := []byte("prefix")
	for _, pt := range [][]byte{nil, {}, make([]byte, proto.MaxChunkSize+1)} {
		got, err := s.AppendFrame(dst, 1, &id, 0, pt)
		if err == nil {
			t.Errorf("AppendFrame(%d bytes) error = nil, want an error", len(pt))
		}
		if !bytes.Equal(got, []byte("prefix")) {
			t.Errorf("AppendFrame(%d bytes) = %q..., want dst unchanged", len(pt), got[:min(len(got), 16)])
		}
	}
}

func TestAppendFrameAppends(t *testing.T) {
	key := sessionKey(17)
	id := id16(18)
	pt := pattern(33, 19)
	frame, err := newSealer(t, key, proto.ClientToServer).AppendFrame([]byte("prefix"), 5, &id, 10, pt)
	if err != nil {
		t.Fatalf("AppendFrame error = %v, want nil", err)
	}
	if got := string(frame[:6]); got != "prefix" {
		t.Errorf("AppendFrame prefix = %q, want %q", got, "prefix")
	}
	h, ct := splitFrame(t, frame[6:])
	got, err := newOpener(t, key, proto.ClientToServer).Open(nil, &h, &id, ct)
	if err != nil || !bytes.Equal(got, pt) {
		t.Errorf("Open = %x, %v, want %x, nil", got, err, pt)
	}
}

func TestNewSessionKey(t *testing.T) {
	k1, err1 := proto.NewSessionKey()
	k2, err2 := proto.NewSessionKey()
	if err1 != nil || err2 != nil {
		t.Fatalf("NewSessionKey errors = %v, %v, want nil", err1, err2)
	}
	if k1 == k2 {
		t.Errorf("two NewSessionKey results = %x, %x, want different", k1, k2)
	}
	if k1 == (proto.SessionKey{}) {
		t.Errorf("NewSessionKey = all zero, want random")
	}
}

func TestStreamTypeAndSizes(t *testing.T) {
	got := []int{int(proto.StreamTypeChunks), proto.ChunkHeaderLen, proto.NonceSize, proto.TagSize, proto.KeySize}
	want := []int{0x43, 28, 12, 16, 32}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("(StreamTypeChunks, ChunkHeaderLen, NonceSize, TagSize, KeySize) = %v, want %v", got, want)
	}
}

// TestSealerNonceExhausted checks the end of the nonce counter.
//
// Regression: once the counter reaches its last value every later Seal fails;
// it never wraps around to nonces already used under the key.
func TestSealerNonceExhausted(t *testing.T) {
	key := sessionKey(20)
	id := id16(21)
	s := newSealer(t, key, proto.ClientToServer)
	proto.SetSealerCounter(s, math.MaxUint64-1)
	frame, err := s.AppendFrame(nil, 1, &id, 0, []byte("last"))
	if err != nil {
		t.Fatalf("AppendFrame with counter 2^64-1 error = %v, want nil", err)
	}
	if h, _ := splitFrame(t, frame); nonceCounter(&h) != math.MaxUint64 {
		t.Errorf("last nonce counter = %d, want %d", nonceCounter(&h), uint64(math.MaxUint64))
	}
	for i := range 3 {
		frame, err := s.AppendFrame(nil, 1, &id, 0, []byte("again"))
		switch {
		case err == nil:
			h, _ := splitFrame(t, frame)
			t.Errorf("AppendFrame %d after exhaustion error = nil (nonce counter %d reused), want %v", i+1, nonceCounter(&h), proto.ErrNonceExhausted)
		case !errors.Is(err, proto.ErrNonceExhausted):
			t.Errorf("AppendFrame %d after exhaustion error = %v, want %v", i+1, err, proto.ErrNonceExhausted)
		}
	}
}

package proto_test

import (
	"bytes"
	"errors"
	"io"
	"math"
	"reflect"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

// maxSeedLen keeps the largest encodings out of the seed corpus: the unit
// tests cover them, and large inputs stall the fuzzing engine, which
// minimizes every new interesting input (quadratic in its length) before it
// goes on (see golang/go#48820, #51484).
const maxSeedLen = 1 << 10

// isParseError reports whether err is a *proto.ParseError.
func isParseError(err error) bool {
	var pe *proto.ParseError
	return errors.As(err, &pe)
}

// FuzzParseMessage checks that ParseMessage never panics, fails only with a
// *ParseError, and that whatever it accepts survives parse → marshal →
// parse unchanged. It also checks that the encoding is canonical: the
// re-encoded payload is the input.
func FuzzParseMessage(f *testing.F) {
	for _, c := range messageCases() {
		p := payloadOf(c.m)
		if len(p) > maxSeedLen {
			continue
		}
		f.Add(byte(c.m.Type()), p)
		f.Add(byte(c.m.Type()), p[:len(p)/2])
		f.Add(byte(c.m.Type()), append(p, 0))
	}
	for _, c := range badPayloads() {
		if len(c.payload) <= maxSeedLen {
			f.Add(byte(c.typ), c.payload)
		}
	}
	f.Add(byte(proto.TypeUploadReady), payloadOf(&proto.UploadReady{Req: 1, Xfer: 2, Status: proto.ReadyUnchanged, Version: 3}))
	f.Add(byte(0x00), []byte{})
	f.Add(byte(0xff), payloadOf(&proto.UploadCommit{Xfer: 1}))
	f.Add(byte(proto.TypeUploadReady), new(wire).u32(1).u32(2).raw(make([]byte, 16)).u8(0).u32(0).u16(0xffff).b)

	f.Fuzz(func(t *testing.T, typ byte, payload []byte) {
		m, err := proto.ParseMessage(proto.MsgType(typ), payload)
		if err != nil {
			if m != nil {
				t.Errorf("ParseMessage(%#x) = %+v, %v, want nil message with the error", typ, m, err)
			}
			if !isParseError(err) {
				t.Errorf("ParseMessage(%#x) error = %v (%T), want *proto.ParseError", typ, err, err)
			}
			if !errors.Is(err, &proto.Error{Code: proto.CodeProtocol}) {
				t.Errorf("errors.Is(%v, &Error{Code: CodeProtocol}) = false, want true", err)
			}
			return
		}
		if got := m.Type(); got != proto.MsgType(typ) {
			t.Fatalf("ParseMessage(%#x).Type() = %v, want %v", typ, got, proto.MsgType(typ))
		}
		enc := proto.AppendMessage(nil, m)
		if got := enc[0]; got != typ {
			t.Errorf("AppendMessage type byte = %#x, want %#x", got, typ)
		}
		if !bytes.Equal(enc[headerLen:], payload) {
			t.Errorf("AppendMessage(ParseMessage(%#x, %x)) payload = %x, want the input (canonical encoding)", typ, payload, enc[headerLen:])
		}
		m2, err := proto.ParseMessage(proto.MsgType(typ), enc[headerLen:])
		if err != nil {
			t.Fatalf("ParseMessage(AppendMessage(%+v)) error = %v, want nil", m, err)
		}
		if !reflect.DeepEqual(m2, m) {
			t.Errorf("parse → marshal → parse = %+v, want %+v", m2, m)
		}
	})
}

// FuzzMessageReader checks that reading a stream of frames never panics,
// ends with io.EOF or a *ParseError, and that the messages it returns
// re-encode to the bytes they were read from.
func FuzzMessageReader(f *testing.F) {
	var stream []byte
	for _, c := range messageCases() {
		frame := encode(c.m)
		if len(frame) > maxSeedLen {
			continue
		}
		f.Add(frame)
		stream = append(stream, frame...)
	}
	f.Add(stream[:min(len(stream), maxSeedLen)])
	f.Add([]byte{})
	f.Add([]byte{byte(proto.TypeUploadCommit)})
	f.Add(rawFrame(proto.TypeUploadCommit, []byte{0, 0, 0}))
	f.Add(append(encode(&proto.ListEnd{Req: 1, Count: 2}), byte(proto.TypeRegister), 0, 0xff, 0xff, 0xff))
	f.Add(append(encode(&proto.ListEnd{Req: 1, Count: 2}), rawFrame(0x77, []byte{1, 2, 3})...))

	f.Fuzz(func(t *testing.T, data []byte) {
		mr := proto.NewMessageReader(bytes.NewReader(data))
		var enc []byte
		var consumed int
		for i := 0; ; i++ {
			// Every frame takes at least its header.
			if i > len(data)/headerLen {
				t.Fatalf("Read returned %d messages from %d bytes, want at most %d", i, len(data), len(data)/headerLen)
			}
			m, err := mr.Read()
			if err == io.EOF {
				if consumed != len(data) {
					t.Errorf("io.EOF after re-encoding %d of %d bytes, want all", consumed, len(data))
				}
				return
			}
			if err != nil {
				if m != nil {
					t.Errorf("Read = %+v, %v, want nil message with the error", m, err)
				}
				if !isParseError(err) {
					t.Errorf("Read error = %v (%T), want io.EOF or *proto.ParseError", err, err)
				}
				return
			}
			enc = proto.AppendMessage(enc[:0], m)
			if !bytes.Equal(enc, data[consumed:min(consumed+len(enc), len(data))]) {
				t.Fatalf("message %d (%+v) re-encodes to %x, want the input's bytes at %d", i, m, enc, consumed)
			}
			consumed += len(enc)
		}
	})
}

// FuzzChunkReader checks that reading chunk frames never panics, ends with
// io.EOF or a *ParseError, and never returns a header or ciphertext longer
// than the reader's limit allows.
func FuzzChunkReader(f *testing.F) {
	s := newSealer(f, sessionKey(1), proto.ClientToServer)
	id := id16(2)
	var stream []byte
	for i, n := range []int{1, 15, 16, 100, 1000} {
		var err error
		if stream, err = s.AppendFrame(stream, uint32(i), &id, uint64(i)*1000, pattern(n, byte(i))); err != nil {
			f.Fatalf("AppendFrame error = %v, want nil", err)
		}
	}
	for _, maxLen := range []uint32{1, 100, 1000, 64<<10 - 1} {
		f.Add(stream, maxLen)
	}
	f.Add(stream[:len(stream)-1], uint32(2000))
	f.Add(stream[:proto.ChunkHeaderLen], uint32(2000))
	f.Add([]byte{}, uint32(1))
	f.Add(proto.AppendChunkHeader(nil, &proto.ChunkHeader{Length: math.MaxUint32}), uint32(1000))
	f.Add(proto.AppendChunkHeader(nil, &proto.ChunkHeader{Offset: proto.MaxFileSize, Length: 1}), uint32(1000))

	f.Fuzz(func(t *testing.T, data []byte, maxLen uint32) {
		limit := maxLen%(64<<10) + 1 // 1..64 KiB
		cr := proto.NewChunkReader(bytes.NewReader(data), limit)
		var consumed int
		for i := 0; ; i++ {
			if i > len(data)/proto.ChunkHeaderLen {
				t.Fatalf("Next returned %d frames from %d bytes, want at most %d", i, len(data), len(data)/proto.ChunkHeaderLen)
			}
			h, ct, err := cr.Next()
			if err == io.EOF {
				if consumed != len(data) {
					t.Errorf("io.EOF after %d of %d bytes, want after all", consumed, len(data))
				}
				return
			}
			if err != nil {
				if ct != nil {
					t.Errorf("Next = %d bytes, %v, want nil ciphertext with the error", len(ct), err)
				}
				if !isParseError(err) {
					t.Errorf("Next error = %v (%T), want io.EOF or *proto.ParseError", err, err)
				}
				return
			}
			if h.Length < 1 || h.Length > limit {
				t.Errorf("header length = %d, want 1..%d", h.Length, limit)
			}
			if h.Offset+uint64(h.Length) > proto.MaxFileSize {
				t.Errorf("header range [%d,+%d) ends past MaxFileSize", h.Offset, h.Length)
			}
			if got, want := len(ct), int(h.Length)+proto.TagSize; got != want || got > int(limit)+proto.TagSize {
				t.Errorf("len(ciphertext) = %d, want %d (at most maxLen+TagSize = %d)", got, want, int(limit)+proto.TagSize)
			}
			frame := append(proto.AppendChunkHeader(nil, &h), ct...)
			if !bytes.Equal(frame, data[consumed:consumed+len(frame)]) {
				t.Fatalf("frame %d (header %+v) is not the input's bytes", i, h)
			}
			consumed += len(frame)
		}
	})
}

// FuzzOpen checks that no frame opens under a fixed key unless it is one of
// the seeded frames sealed with that key, and that Open never panics.
func FuzzOpen(f *testing.F) {
	key := sessionKey(0x42)
	id := id16(0x43)
	s := newSealer(f, key, proto.ClientToServer)
	// valid maps each sealed frame, less its xfer field, to its plaintext.
	// The xfer field is not authenticated (a frame is bound to its
	// transfer through the transfer's ID), so it may take any value.
	valid := map[string][]byte{}
	for i, n := range []int{1, 16, 100, 1000} {
		pt := pattern(n, byte(i))
		frame := sealFrame(f, s, uint32(i), id, uint64(i)<<20, pt)
		valid[string(frame[4:])] = pt
		f.Add(frame)
	}
	other := sealFrame(f, newSealer(f, sessionKey(0x44), proto.ClientToServer), 0, id, 0, []byte("other key"))
	f.Add(other)
	reflected := sealFrame(f, newSealer(f, key, proto.ServerToClient), 0, id, 0, []byte("other direction"))
	f.Add(reflected)
	f.Add([]byte{})
	f.Add(make([]byte, proto.ChunkHeaderLen+proto.TagSize+1))

	o := newOpener(f, key, proto.ClientToServer)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < proto.ChunkHeaderLen {
			return
		}
		// Open must cope with any header, even one ParseChunkHeader refuses.
		h, _ := proto.ParseChunkHeader(frame[:proto.ChunkHeaderLen], math.MaxUint32)
		ct := append([]byte(nil), frame[proto.ChunkHeaderLen:]...)
		pt, err := o.Open(ct[:0], &h, &id, ct)
		if err != nil {
			if pt != nil {
				t.Errorf("Open = %d bytes, %v, want nil plaintext with the error", len(pt), err)
			}
			if !errors.Is(err, proto.ErrChunkAuth) {
				t.Errorf("Open error = %v, want %v", err, proto.ErrChunkAuth)
			}
			return
		}
		want, ok := valid[string(frame[4:])]
		if !ok {
			t.Fatalf("Open accepted a frame that was never sealed: header %+v, %d ciphertext bytes", h, len(ct))
		}
		if !bytes.Equal(pt, want) {
			t.Errorf("Open = %x, want %x", pt, want)
		}
	})
}

// decodeRangeOps turns fuzz bytes into Add arguments, three bytes per op:
// a kind, then two bytes scaled by the kind so that small, dense ranges
// (many overlaps and merges), larger ones and ones at the bounds all occur.
func decodeRangeOps(b []byte) []proto.Range {
	const maxOps = 64 // the model below is quadratic; long inputs stall minimization
	b = b[:min(len(b), 3*maxOps)]
	var ops []proto.Range
	for ; len(b) >= 3; b = b[3:] {
		a, n := uint64(b[1]), uint64(b[2])
		switch b[0] % 8 {
		case 0, 1, 2, 3:
		case 4:
			a, n = a*64, n*64
		case 5:
			a, n = a<<40, n<<40
		case 6:
			a = proto.MaxFileSize - a
		case 7:
			a = math.MaxUint64 - a
		}
		if b[0]&0x80 != 0 {
			n = math.MaxUint64 - n
		}
		ops = append(ops, proto.Range{Off: a, Len: n})
	}
	return ops
}

// FuzzRangeSet applies a sequence of adds and checks them against a simple
// model, then checks the set's invariants: sorted, disjoint, merged, Total
// the sum of accepted adds, and Missing(size) ∪ ranges = [0, size).
func FuzzRangeSet(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 10, 0, 10, 10, 0, 20, 10})              // in order, adjacent
	f.Add([]byte{0, 20, 10, 0, 10, 10, 0, 0, 10})              // reverse
	f.Add([]byte{0, 0, 10, 0, 20, 10, 0, 10, 10})              // merge both sides
	f.Add([]byte{0, 0, 10, 0, 5, 10, 0, 0, 0})                 // overlap, zero length
	f.Add([]byte{6, 1, 1, 6, 0, 1, 6, 2, 1, 7, 0, 1, 0x80, 1}) // bounds, overflow
	f.Add([]byte{4, 1, 2, 5, 0, 1, 4, 0, 1, 0, 200, 55, 0, 255, 1})

	const max = proto.MaxFileSize
	f.Fuzz(func(t *testing.T, b []byte) {
		var s proto.RangeSet
		var accepted []proto.Range
		var sum uint64
		for i, op := range decodeRangeOps(b) {
			want := op.Len > 0 && op.Off <= max && op.Len <= max-op.Off
			for _, r := range accepted {
				if want && op.Off < r.Off+r.Len && r.Off < op.Off+op.Len {
					want = false
				}
			}
			before, beforeTotal := s.Ranges(), s.Total()
			err := s.Add(op.Off, op.Len)
			if got := err == nil; got != want {
				t.Fatalf("op %d: Add(%d, %d) error = %v, want accepted %v (accepted so far %v)", i, op.Off, op.Len, err, want, accepted)
			}
			if err != nil {
				if got := s.Ranges(); !reflect.DeepEqual(got, before) || s.Total() != beforeTotal {
					t.Fatalf("op %d: rejected Add(%d, %d) changed the set to %v (total %d), want %v (total %d)", i, op.Off, op.Len, got, s.Total(), before, beforeTotal)
				}
				continue
			}
			accepted = append(accepted, op)
			sum += op.Len
		}

		rs := s.Ranges()
		var total uint64
		for i, r := range rs {
			if r.Len == 0 || r.Off > max || r.Len > max-r.Off {
				t.Errorf("range %d = %v: empty or out of bounds", i, r)
			}
			if i > 0 && r.Off <= rs[i-1].Off+rs[i-1].Len {
				t.Errorf("ranges %d, %d = %v, %v: want sorted, disjoint and not adjacent (merged)", i-1, i, rs[i-1], r)
			}
			total += r.Len
		}
		if got := s.Total(); got != sum || total != sum {
			t.Errorf("Total = %d, sum of ranges = %d, want the sum of accepted adds %d", got, total, sum)
		}
		// Every accepted add lies in one range; with equal sizes, the union
		// of the ranges is exactly the union of the adds.
		for _, a := range accepted {
			found := false
			for _, r := range rs {
				if r.Off <= a.Off && a.Off+a.Len <= r.Off+r.Len {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("accepted add %v lies in no range of %v", a, rs)
			}
		}

		// Missing(size) and the set, clipped to size, must tile [0, size)
		// exactly: walk both sorted lists, each range starting where the
		// previous one ended.
		sizes := []uint64{0, 1, 100, max}
		for _, r := range rs[:min(len(rs), 16)] {
			sizes = append(sizes, r.Off, r.Off+1, r.Off+r.Len, r.Off+r.Len+1)
		}
		for _, size := range sizes {
			if size > max {
				continue
			}
			miss := s.Missing(size)
			for i, m := range miss {
				if m.Len == 0 {
					t.Errorf("Missing(%d)[%d] = %v: empty", size, i, m)
				}
				if i > 0 && m.Off <= miss[i-1].Off+miss[i-1].Len {
					t.Errorf("Missing(%d) = %v: want sorted, disjoint, not adjacent", size, miss)
				}
			}
			var pos uint64
			i, j := 0, 0
			for pos < size && (i < len(miss) || j < len(rs)) {
				var next proto.Range
				if j == len(rs) || (i < len(miss) && miss[i].Off < rs[j].Off) {
					next, i = miss[i], i+1
				} else {
					next, j = rs[j], j+1
				}
				if next.Off != pos {
					t.Fatalf("Missing(%d) = %v with ranges %v: at %d the next range is %v, want one starting at %d (no gap, no overlap)", size, miss, rs, pos, next, pos)
				}
				pos = next.Off + next.Len
			}
			if i != len(miss) {
				t.Errorf("Missing(%d) = %v: ranges left past size %d", size, miss[i:], size)
			}
			if pos < size {
				t.Errorf("Missing(%d) = %v with ranges %v covers [0, %d), want [0, %d)", size, miss, rs, pos, size)
			}
			if len(miss) > 0 && miss[len(miss)-1].Off+miss[len(miss)-1].Len > size {
				t.Errorf("Missing(%d) = %v: ends past size", size, miss)
			}
			// Covers must agree with Missing.
			covers, want := s.Covers(size), len(miss) == 0
			if covers != want {
				t.Errorf("Covers(%d) = %v, want %v (Missing = %v, ranges %v)", size, covers, want, miss, rs)
			}
		}
	})
}

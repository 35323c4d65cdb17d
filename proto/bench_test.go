package proto_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

// The benchmarks of the per-chunk path report allocations per chunk: in the
// steady state there should be none. Run a quick pass of all of them with
//
//	go test -run '^$' -bench . -benchtime 1x ./proto

// benchChunkSizes are the chunk sizes the chunk benchmarks run with: the
// default chunk size and a small one, where per-chunk costs show more.
var benchChunkSizes = []struct {
	name string
	size int
}{
	{"64KiB", 64 << 10},
	{"1MiB", 1 << 20},
}

// BenchmarkSealerAppendFrame seals one chunk per op into a reused frame
// buffer, as ChunkSender does.
func BenchmarkSealerAppendFrame(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(cs.name, func(b *testing.B) {
			s := newSealer(b, sessionKey(1), proto.ClientToServer)
			id := id16(2)
			pt := pattern(cs.size, 3)
			frame := make([]byte, 0, proto.ChunkHeaderLen+cs.size+proto.TagSize)
			b.SetBytes(int64(cs.size))
			b.ReportAllocs()
			var off uint64
			for b.Loop() {
				var err error
				if frame, err = s.AppendFrame(frame[:0], 1, &id, off, pt); err != nil {
					b.Fatal(err)
				}
				off += uint64(cs.size)
			}
		})
	}
}

// BenchmarkOpenerOpen opens one chunk per op in place, as ReadChunkFrames
// does. Opening in place destroys the ciphertext, so each op first copies
// it back into the buffer; the copy is a small part of the time.
func BenchmarkOpenerOpen(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(cs.name, func(b *testing.B) {
			key := sessionKey(1)
			s := newSealer(b, key, proto.ClientToServer)
			o := newOpener(b, key, proto.ClientToServer)
			id := id16(2)
			h, ct := splitFrame(b, sealFrame(b, s, 1, id, 0, pattern(cs.size, 3)))
			buf := make([]byte, len(ct))
			b.SetBytes(int64(cs.size))
			b.ReportAllocs()
			for b.Loop() {
				copy(buf, ct)
				if _, err := o.Open(buf[:0], &h, &id, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMessage encodes (Append) and decodes (Read) the control messages
// a transfer exchanges, one message per op. Read returns a new message each
// time, so it allocates the message and its variable-length fields.
func BenchmarkMessage(b *testing.B) {
	msgs := []proto.Message{
		&proto.UploadRequest{Req: 7, Name: "photos/2024/img_0001.jpg", Size: 5 << 20, ModTime: 1700000000e9, Mode: 0o644, Flags: proto.FlagHashed, CRC: 0xdeadbeef, SHA256: sum32(1)},
		&proto.UploadReady{Req: 7, Xfer: 3, UploadID: id16(1), Status: proto.ReadySend, Missing: []proto.Range{{Off: 0, Len: 5 << 20}}},
		&proto.UploadChecksum{Xfer: 3, CRC: 0xdeadbeef, SHA256: sum32(1)},
		&proto.UploadCommit{Xfer: 3},
		&proto.UploadResult{Xfer: 3, Status: proto.ResultStored, Version: 2, StoredAt: 1700000001e9},
		&proto.ListEntry{Req: 8, Name: "photos/2024/img_0001.jpg", Version: 2, Versions: 2, Size: 5 << 20, ModTime: 1700000000e9, Mode: 0o644, CRC: 0xdeadbeef, SHA256: sum32(1), StoredAt: 1700000001e9, Verified: true},
	}
	for _, m := range msgs {
		frame := proto.AppendMessage(nil, m)
		b.Run("Append/"+m.Type().String(), func(b *testing.B) {
			buf := make([]byte, 0, len(frame))
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				buf = proto.AppendMessage(buf[:0], m)
			}
		})
		b.Run("Read/"+m.Type().String(), func(b *testing.B) {
			r := bytes.NewReader(frame)
			mr := proto.NewMessageReader(r)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(frame)
				got, err := mr.Read()
				if err != nil {
					b.Fatal(err)
				}
				if got.Type() != m.Type() {
					b.Fatalf("read a %v, want %v", got.Type(), m.Type())
				}
			}
		})
	}
}

// BenchmarkChunkSender sends one chunk per op through a ChunkSender with 8
// streams (the server's default), each writing to io.Discard: buffer, seal,
// write, callback.
func BenchmarkChunkSender(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(cs.name, func(b *testing.B) {
			sealer := newSealer(b, sessionKey(1), proto.ClientToServer)
			open := func(context.Context) (io.WriteCloser, error) { return nopWriteCloser{io.Discard}, nil }
			ctx := b.Context()
			s := proto.NewChunkSender(ctx, sealer, 8, cs.size, open)
			id := id16(2)
			sent := func(n int, err error) {
				if err != nil {
					b.Error(err)
				}
			}
			b.SetBytes(int64(cs.size))
			b.ReportAllocs()
			var off uint64
			for b.Loop() {
				buf, err := s.Buffer(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Send(ctx, 1, &id, off, buf, sent); err != nil {
					b.Fatal(err)
				}
				off += uint64(cs.size)
			}
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkReadChunkFrames reads and opens one chunk per op from an endless
// in-memory stream of sealed frames, with the reader's own buffer and with
// buffers lent by a BufferSource, as the server's are.
func BenchmarkReadChunkFrames(b *testing.B) {
	for _, cs := range benchChunkSizes {
		key := sessionKey(1)
		sealer := newSealer(b, key, proto.ClientToServer)
		opener := newOpener(b, key, proto.ClientToServer)
		id := id16(2)
		var stream []byte
		for i := range 4 {
			stream = append(stream, sealFrame(b, sealer, 1, id, uint64(i*cs.size), pattern(cs.size, byte(i)))...)
		}
		for _, lend := range []bool{false, true} {
			name := cs.name + "/own"
			if lend {
				name = cs.name + "/lent"
			}
			b.Run(name, func(b *testing.B) {
				cr := proto.NewChunkReader(&repeatReader{b: stream}, uint32(cs.size))
				if lend {
					cr.Buffers = &bufferStack{}
				}
				resolve := func(uint32) (*[16]byte, error) { return &id, nil }
				n := 0
				handle := func(*proto.ChunkHeader, []byte) error {
					if n++; n == b.N {
						return errBenchDone
					}
					return nil
				}
				b.SetBytes(int64(cs.size))
				b.ReportAllocs()
				b.ResetTimer()
				if err := proto.ReadChunkFrames(cr, opener, resolve, handle); err != errBenchDone {
					b.Fatal(err)
				}
			})
		}
	}
}

var errBenchDone = errors.New("benchmark done")

// TestChunkPathNoAllocs checks that sealing, sending, reading and opening a
// chunk allocate nothing once buffers are warm, as the benchmarks above
// report.
func TestChunkPathNoAllocs(t *testing.T) {
	const size = 4 << 10
	key := sessionKey(1)
	sealer := newSealer(t, key, proto.ClientToServer)
	opener := newOpener(t, key, proto.ClientToServer)
	id := id16(2)
	pt := pattern(size, 3)
	frame := sealFrame(t, sealer, 1, id, 0, pt)
	h, ct := splitFrame(t, frame)
	buf := make([]byte, len(ct))

	ctx := context.Background()
	open := func(context.Context) (io.WriteCloser, error) { return nopWriteCloser{io.Discard}, nil }
	// One stream, so that warming up reaches its goroutine's frame buffer.
	sender := proto.NewChunkSender(ctx, sealer, 1, size, open)
	defer sender.Close()
	send := func() {
		b, err := sender.Buffer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := sender.Send(ctx, 1, &id, 0, b, nil); err != nil {
			t.Fatal(err)
		}
	}

	resolve := func(uint32) (*[16]byte, error) { return &id, nil }
	stop := func(*proto.ChunkHeader, []byte) error { return errBenchDone }
	readOne := func(cr *proto.ChunkReader) func() {
		return func() {
			if err := proto.ReadChunkFrames(cr, opener, resolve, stop); err != errBenchDone {
				t.Fatal(err)
			}
		}
	}
	own := proto.NewChunkReader(&repeatReader{b: frame}, size)
	lent := proto.NewChunkReader(&repeatReader{b: frame}, size)
	lent.Buffers = &bufferStack{}

	tests := []struct {
		name string
		f    func()
	}{
		{"AppendFrame", func() {
			if frame, _ = sealer.AppendFrame(frame[:0], 1, &id, 0, pt); len(frame) == 0 {
				t.Fatal("no frame")
			}
		}},
		{"Open", func() {
			copy(buf, ct)
			if _, err := opener.Open(buf[:0], &h, &id, buf); err != nil {
				t.Fatal(err)
			}
		}},
		{"ChunkSender", send},
		{"ReadChunkFrames", readOne(own)},
		{"ReadChunkFrames with Buffers", readOne(lent)},
	}
	for _, tc := range tests {
		for range 4 {
			tc.f() // warm the buffers
		}
		// Under the race detector sync.Pool drops some items on purpose;
		// AllocsPerRun truncates the average, so that stays below 1.
		if got := testing.AllocsPerRun(50, tc.f); got != 0 {
			t.Errorf("%s: %v allocs per chunk, want 0", tc.name, got)
		}
	}
}

// repeatReader reads b over and over.
type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

// bufferStack is a BufferSource that reuses the buffers given back.
type bufferStack struct{ free [][]byte }

func (s *bufferStack) Get(n int) ([]byte, error) {
	if k := len(s.free); k > 0 && cap(s.free[k-1]) >= n {
		p := s.free[k-1]
		s.free = s.free[:k-1]
		return p[:n], nil
	}
	return make([]byte, n), nil
}

func (s *bufferStack) Put(p []byte) { s.free = append(s.free, p) }

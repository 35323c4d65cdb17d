package quicsrv

import (
	"errors"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// These benchmarks measure the server's per-chunk receive path without a
// network: the chunk buffers a data stream borrows from the memory budget
// (chunkBuffers), and reading and opening frames with them. Writing the
// plaintext to its upload (session.receive, the store) is not included.
// chunkBuffers only calls SetReadDeadline on its stream, which a zero
// quic.ReceiveStream allows.

var benchChunkSizes = []struct {
	name string
	size int
}{
	{"64KiB", 64 << 10},
	{"1MiB", DefaultChunkSize},
}

// BenchmarkChunkBuffers borrows and gives back one chunk buffer per op.
func BenchmarkChunkBuffers(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(cs.name, func(b *testing.B) {
			ss := benchSession(b, cs.size)
			bufs := &chunkBuffers{ss: ss, pr: &progressReader{rs: new(quic.ReceiveStream), stall: time.Minute}}
			n := cs.size + proto.TagSize
			b.ReportAllocs()
			for b.Loop() {
				p, err := bufs.Get(n)
				if err != nil {
					b.Fatal(err)
				}
				bufs.Put(p)
			}
			if used := ss.srv.memoryInUse(); used != 0 {
				b.Fatalf("%d bytes of the budget still in use", used)
			}
		})
	}
}

// BenchmarkReceiveChunks reads and opens one chunk per op from an endless
// in-memory data stream, in buffers from chunkBuffers, as readData does.
func BenchmarkReceiveChunks(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(cs.name, func(b *testing.B) {
			var key proto.SessionKey
			sealer, err := proto.NewSealer(&key, proto.ClientToServer)
			if err != nil {
				b.Fatal(err)
			}
			opener, err := proto.NewOpener(&key, proto.ClientToServer)
			if err != nil {
				b.Fatal(err)
			}
			id := [16]byte{1}
			plaintext := make([]byte, cs.size)
			var stream []byte
			for i := range 4 {
				if stream, err = sealer.AppendFrame(stream, 1, &id, uint64(i*cs.size), plaintext); err != nil {
					b.Fatal(err)
				}
			}

			ss := benchSession(b, cs.size)
			cr := proto.NewChunkReader(&repeatReader{b: stream}, uint32(ss.srv.chunkSize()))
			cr.Buffers = &chunkBuffers{ss: ss, pr: &progressReader{rs: new(quic.ReceiveStream), stall: time.Minute}}
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
			b.StopTimer()
			if used := ss.srv.memoryInUse(); used != 0 {
				b.Fatalf("%d bytes of the budget still in use", used)
			}
		})
	}
}

var errBenchDone = errors.New("benchmark done")

// benchSession is a session with a client account, as after the
// handshake.
func benchSession(b *testing.B, chunk int) *session {
	ss := &session{srv: &Server{ChunkSize: chunk}, ctx: b.Context()}
	_, buffers := ss.srv.budgets()
	ss.acct = &account{share: newBudget(ss.srv.clientMemory()), all: buffers}
	return ss
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

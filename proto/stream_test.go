package proto_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
)

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// TestChunkSenderCloseWhileSending closes a sender while other goroutines
// are still sending: Send fails cleanly instead of panicking.
func TestChunkSenderCloseWhileSending(t *testing.T) {
	var key proto.SessionKey
	sealer, err := proto.NewSealer(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out bytes.Buffer
	open := func(context.Context) (io.WriteCloser, error) {
		return nopWriteCloser{writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return out.Write(p)
		})}, nil
	}
	ctx := context.Background()
	s := proto.NewChunkSender(ctx, sealer, 2, 1024, open)
	var id [16]byte
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				buf, err := s.Buffer(ctx)
				if err != nil {
					return
				}
				if err := s.Send(ctx, 1, &id, uint64(g*200+i)*1024, buf[:100], nil); err != nil {
					return
				}
			}
		}()
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
	wg.Wait()
}

// TestChunkSenderCancelAccountsForEveryChunk cancels a sender while
// goroutines are sending: every chunk Send accepted has its sent called
// (written or failed), so nothing that counts queued bytes is left
// waiting for a chunk that will never come. (A Send racing the stream
// goroutines' exit could queue a job no goroutine would ever see.)
func TestChunkSenderCancelAccountsForEveryChunk(t *testing.T) {
	var key proto.SessionKey
	sealer, err := proto.NewSealer(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	open := func(ctx context.Context) (io.WriteCloser, error) {
		return nopWriteCloser{writerFunc(func(p []byte) (int, error) {
			<-ctx.Done() // a stream that never drains, like a dead link
			return 0, context.Cause(ctx)
		})}, nil
	}
	var id [16]byte
	for round := range 200 {
		ctx, cancel := context.WithCancel(context.Background())
		s := proto.NewChunkSender(ctx, sealer, 2, 1024, open)
		var accepted, sent atomic.Int64
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 50 {
					buf, err := s.Buffer(context.Background())
					if err != nil {
						return
					}
					done := func(int, error) { sent.Add(1) }
					if s.Send(context.Background(), 1, &id, uint64(g*50+i)*1024, buf[:10], done) == nil {
						accepted.Add(1)
					}
				}
			})
		}
		time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
		cancel()
		wg.Wait()
		s.Close()
		if a, n := accepted.Load(), sent.Load(); a != n {
			t.Fatalf("round %d: Send accepted %d chunks, sent was called for %d", round, a, n)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// lender is a BufferSource that counts what is out.
type lender struct {
	out, gets int
	fail      error
}

func (l *lender) Get(n int) ([]byte, error) {
	if l.fail != nil {
		return nil, l.fail
	}
	l.out++
	l.gets++
	return make([]byte, n), nil
}

func (l *lender) Put([]byte) { l.out-- }

// sealedFrames returns a stream of n chunk frames of transfer 1 (frame i:
// 100 bytes of value i at offset 100*i) and the opener for it.
func sealedFrames(t *testing.T, id *[16]byte, n int) ([]byte, *proto.Opener) {
	t.Helper()
	var key proto.SessionKey
	sealer, err := proto.NewSealer(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	opener, err := proto.NewOpener(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for i := range n {
		if stream, err = sealer.AppendFrame(stream, 1, id, uint64(i*100), bytes.Repeat([]byte{byte(i)}, 100)); err != nil {
			t.Fatal(err)
		}
	}
	return stream, opener
}

// TestChunkReaderBuffers: with a BufferSource, every frame's buffer is
// lent and given back, whether the stream ends cleanly, is cut in the
// middle of a payload, fails authentication or is refused by the source.
func TestChunkReaderBuffers(t *testing.T) {
	id := [16]byte{1}
	stream, opener := sealedFrames(t, &id, 5)
	tampered := bytes.Clone(stream)
	tampered[len(tampered)-1] ^= 1
	refused := errors.New("over budget")
	tests := []struct {
		name    string
		stream  []byte
		fail    error
		wantErr bool
		frames  int
	}{
		{"clean end", stream, nil, false, 5},
		{"cut in a payload", stream[:len(stream)-10], nil, true, 4},
		{"tampered last chunk", tampered, nil, true, 4},
		{"source refuses", stream, refused, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &lender{fail: tt.fail}
			cr := proto.NewChunkReader(bytes.NewReader(tt.stream), 100)
			cr.Buffers = l
			frames := 0
			err := proto.ReadChunkFrames(cr, opener,
				func(uint32) (*[16]byte, error) { return &id, nil },
				func(h *proto.ChunkHeader, p []byte) error {
					frames++
					if l.out != 1 {
						t.Errorf("%d buffers out while handling a frame, want 1", l.out)
					}
					return nil
				})
			if (err != nil) != tt.wantErr || frames != tt.frames {
				t.Fatalf("ReadChunkFrames = %v after %d frames; want error %v after %d", err, frames, tt.wantErr, tt.frames)
			}
			if tt.fail != nil && !errors.Is(err, tt.fail) {
				t.Fatalf("error %v does not wrap the source's", err)
			}
			if l.out != 0 {
				t.Fatalf("%d buffers not given back", l.out)
			}
		})
	}
}

// TestChunkReaderDetach: a handler that detaches a frame's buffer keeps it
// past the next frame, and the reader does not give it back; the others
// go back as before.
func TestChunkReaderDetach(t *testing.T) {
	id := [16]byte{2}
	stream, opener := sealedFrames(t, &id, 6)
	l := &lender{}
	cr := proto.NewChunkReader(bytes.NewReader(stream), 100)
	cr.Buffers = l
	var kept [][]byte
	err := proto.ReadChunkFrames(cr, opener,
		func(uint32) (*[16]byte, error) { return &id, nil },
		func(h *proto.ChunkHeader, p []byte) error {
			if h.Offset%200 == 0 { // frames 0, 2, 4
				b := cr.Detach()
				if b == nil || &b[0] != &p[0] {
					t.Fatalf("Detach at %d = a buffer other than the frame's", h.Offset)
				}
				if cr.Detach() != nil {
					t.Fatal("a second Detach returned a buffer")
				}
				kept = append(kept, p)
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if l.out != len(kept) || len(kept) != 3 {
		t.Fatalf("%d buffers out after the stream, %d detached; want 3 and 3", l.out, len(kept))
	}
	for i, p := range kept {
		if !bytes.Equal(p, bytes.Repeat([]byte{byte(2 * i)}, 100)) {
			t.Errorf("detached frame %d was overwritten", 2*i)
		}
	}
	if proto.NewChunkReader(bytes.NewReader(nil), 100).Detach() != nil {
		t.Error("Detach without Buffers returned a buffer")
	}
}

// linkStream is a data stream on an emulated link that sends what is
// written to it the way quic-go schedules non-incremental streams: one
// whole write at a time, lowest urgency first, then lowest stream ID.
type linkStream struct {
	l       *fakeLink
	idx     int // stream ID order
	urgency int8
	inc     bool
}

func (s *linkStream) SetPriority(urgency int8, incremental bool) {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.urgency, s.inc = urgency, incremental
}

func (s *linkStream) Close() error { return nil }

func (s *linkStream) Write(p []byte) (int, error) {
	if len(p) == 1 { // the stream type byte
		return 1, nil
	}
	h, err := proto.ParseChunkHeader(p[:proto.ChunkHeaderLen], 1<<20)
	if err != nil {
		return 0, err
	}
	done := make(chan struct{})
	s.l.mu.Lock()
	s.l.waiting = append(s.l.waiting, pendingWrite{s, h.Offset, done})
	s.l.mu.Unlock()
	<-done
	return len(p), nil
}

type pendingWrite struct {
	s    *linkStream
	off  uint64
	done chan struct{}
}

type fakeLink struct {
	mu      sync.Mutex
	waiting []pendingWrite
	sent    atomic.Int64 // writes the sender has reported done
}

// sendNext waits until the sender has settled after the writes before
// (done reported for the first done of them, want writes waiting), then
// sends the one the scheduler picks and returns its offset and its
// stream's priority.
func (l *fakeLink) sendNext(t *testing.T, done int64, want int) (uint64, int8, bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		if len(l.waiting) >= want && l.sent.Load() == done {
			best := 0
			for i, w := range l.waiting {
				b := l.waiting[best]
				if w.s.urgency < b.s.urgency || w.s.urgency == b.s.urgency && w.s.idx < b.s.idx {
					best = i
				}
			}
			w := l.waiting[best]
			l.waiting = append(l.waiting[:best], l.waiting[best+1:]...)
			urgency, inc := w.s.urgency, w.s.inc
			l.mu.Unlock()
			close(w.done)
			return w.off, urgency, inc
		}
		l.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("only %d writes waiting, want %d", len(l.waiting), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestChunkSenderOldestFirst: on streams whose priority can be set, the
// chunks leave in the order they were sent, each as a whole, though every
// stream holds one (round robin, or by stream ID alone, would not), and at
// an urgency below QUIC's default 3 of the control stream.
func TestChunkSenderOldestFirst(t *testing.T) {
	const streams, chunks, size = 4, 24, 1024
	var key proto.SessionKey
	sealer, err := proto.NewSealer(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	l := &fakeLink{}
	var opened int
	var omu sync.Mutex
	open := func(context.Context) (io.WriteCloser, error) {
		omu.Lock()
		defer omu.Unlock()
		opened++
		return &linkStream{l: l, idx: opened, urgency: 3, inc: true}, nil
	}
	ctx := context.Background()
	s := proto.NewChunkSender(ctx, sealer, streams, size, open)
	var id [16]byte
	go func() {
		for i := range chunks {
			buf, err := s.Buffer(ctx)
			if err != nil {
				return
			}
			if s.Send(ctx, 1, &id, uint64(i*size), buf[:size], func(int, error) { l.sent.Add(1) }) != nil {
				return
			}
		}
	}()
	for i := range chunks {
		off, urgency, inc := l.sendNext(t, int64(i), min(streams, chunks-i))
		if off != uint64(i*size) {
			t.Fatalf("chunk %d left as the %d-th: want the oldest first", off/size, i)
		}
		if urgency <= 3 || inc {
			t.Fatalf("chunk %d left at urgency %d, incremental %v: want > 3 (after the control stream), not incremental", i, urgency, inc)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

package proto_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

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

// TestChunkReaderBuffers: with a BufferSource, every frame's buffer is
// lent and given back, whether the stream ends cleanly, is cut in the
// middle of a payload, fails authentication or is refused by the source.
func TestChunkReaderBuffers(t *testing.T) {
	var key proto.SessionKey
	sealer, err := proto.NewSealer(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	opener, err := proto.NewOpener(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	id := [16]byte{1}
	var stream []byte
	for i := range 5 {
		if stream, err = sealer.AppendFrame(stream, 1, &id, uint64(i*100), bytes.Repeat([]byte{byte(i)}, 100)); err != nil {
			t.Fatal(err)
		}
	}
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

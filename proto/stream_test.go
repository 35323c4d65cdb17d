package proto_test

import (
	"bytes"
	"context"
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

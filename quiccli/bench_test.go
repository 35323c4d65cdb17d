package quiccli

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// BenchmarkSendLoopback sends one file over UDP loopback to a real server
// with the default chunk size; each iteration stores a new version.
func BenchmarkSendLoopback(b *testing.B) {
	for _, size := range []int{64 << 20} {
		b.Run(formatBytes(int64(size)), func(b *testing.B) {
			srv := srvtest.Start(b, nil)
			c := &Client{Home: filepath.Join(b.TempDir(), "home"), KeyBits: 2048, Out: io.Discard, Err: io.Discard}
			ctx := b.Context()
			if _, err := c.Register(ctx, srv.Addr, "bench", RegisterOptions{Fingerprint: srv.Fingerprint}); err != nil {
				b.Fatal(err)
			}
			s, _, err := c.Connect(ctx, "", "")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			path := filepath.Join(b.TempDir(), "f")
			f, _ := os.Create(path)
			io.CopyN(f, zeroReader{}, int64(size))
			f.Close()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// A new mtime each round, so the quick check sends again.
				os.Chtimes(path, timeAt(i), timeAt(i))
				res := s.Send(ctx, SendOptions{Paths: []string{path}}, nopReporter{})
				if res.Sent != 1 {
					b.Fatalf("sent %d: %v", res.Sent, res.FirstErr)
				}
			}
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i * 7)
	}
	return len(p), nil
}

func timeAt(i int) time.Time { return time.Unix(1700000000+int64(i), 0) }

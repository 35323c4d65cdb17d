package quic_test

import (
	"context"
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/quic"
)

func TestParseCongestion(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    quic.Congestion
		wantErr bool
	}{
		{"bbr", quic.BBR, false},
		{"reno", quic.Reno, false},
		{"", quic.BBR, false},
		{"cubic", "", true},
		{"BBR", "", true},
	} {
		got, err := quic.ParseCongestion(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseCongestion(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// loopback starts a QUIC server on 127.0.0.1 that reads every
// unidirectional stream to its end and reports the bytes and when the
// last arrived, and returns its address.
func loopback(t *testing.T) (addr string, got func() (int64, time.Time)) {
	t.Helper()
	cert, err := certs.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", certs.ServerConfig(cert, "cc-test"), &quic.Config{
		MaxConnectionReceiveWindow: 64 << 20, MaxStreamReceiveWindow: 64 << 20, MaxIncomingUniStreams: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var n int64
	var last time.Time
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					s, err := conn.AcceptUniStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						k, _ := io.Copy(io.Discard, s)
						mu.Lock()
						n += k
						last = time.Now()
						mu.Unlock()
					}()
				}
			}()
		}
	}()
	return ln.Addr().String(), func() (int64, time.Time) {
		mu.Lock()
		defer mu.Unlock()
		return n, last
	}
}

func dial(t *testing.T, addr string) *quic.Conn {
	t.Helper()
	tlsConf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"cc-test"}}
	conn, err := quic.DialAddr(context.Background(), addr, tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

func send(t *testing.T, conn *quic.Conn, n int) {
	t.Helper()
	s, err := conn.OpenUniStream()
	if err != nil {
		t.Error(err)
		return
	}
	if _, err := s.Write(make([]byte, n)); err != nil {
		t.Error(err)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}

// TestRateLimit: the connections sharing a limit send, together, no
// faster than it allows. (Only the upper bound is checked: a slow machine
// makes a transfer slower, never faster.)
func TestRateLimit(t *testing.T) {
	const (
		limit = 1 << 20
		each  = 1 << 20
	)
	for _, conns := range []int{1, 2} {
		addr, got := loopback(t)
		l := quic.NewRateLimit(limit)
		var cs []*quic.Conn
		for range conns {
			c := dial(t, addr)
			if _, err := quic.UseCongestion(c, quic.BBR, l); err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Add(1)
			go func() { defer wg.Done(); send(t, c, each) }()
		}
		wg.Wait()
		deadline := time.Now().Add(30 * time.Second)
		for {
			n, last := got()
			if n == int64(conns*each) {
				rate := float64(n) / last.Sub(start).Seconds()
				t.Logf("%d connections under a %d B/s limit: %d bytes in %v, %.0f B/s", conns, limit, n, last.Sub(start).Round(time.Millisecond), rate)
				if rate > 1.15*limit {
					t.Errorf("%d connections sent %.0f B/s under a limit of %d", conns, rate, limit)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the server received %d of %d bytes in 30 s", n, conns*each)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestRenoCannotBeLimited(t *testing.T) {
	addr, _ := loopback(t)
	c := dial(t, addr)
	if _, err := quic.UseCongestion(c, quic.Reno, quic.NewRateLimit(1e6)); err == nil {
		t.Error("Reno took a rate limit")
	}
	if _, err := quic.UseCongestion(c, quic.Reno, quic.NewRateLimit(0)); err != nil {
		t.Errorf("Reno without a limit: %v", err)
	}
}

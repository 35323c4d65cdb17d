package quiccli

import (
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// deadableConn is a UDP socket a test can cut off, as when the address it
// is bound to disappears after a network change: from then on nothing it
// sends arrives and nothing reaches it.
// It implements net.PacketConn only, so quic-go cannot go around it
// through the *net.UDPConn's message methods.
type deadableConn struct {
	udp  *net.UDPConn
	dead atomic.Bool
}

func (c *deadableConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.dead.Load() {
		return len(p), nil // lost on the way
	}
	return c.udp.WriteTo(p, addr)
}

func (c *deadableConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.udp.ReadFrom(p)
		if err != nil || !c.dead.Load() {
			return n, addr, err
		}
	}
}

func (c *deadableConn) Close() error                       { return c.udp.Close() }
func (c *deadableConn) LocalAddr() net.Addr                { return c.udp.LocalAddr() }
func (c *deadableConn) SetDeadline(t time.Time) error      { return c.udp.SetDeadline(t) }
func (c *deadableConn) SetReadDeadline(t time.Time) error  { return c.udp.SetReadDeadline(t) }
func (c *deadableConn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// sockets hands out deadable sockets and remembers them.
type sockets struct {
	mu    sync.Mutex
	conns []*deadableConn
}

func (s *sockets) open() (net.PacketConn, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	dc := &deadableConn{udp: c}
	s.mu.Lock()
	s.conns = append(s.conns, dc)
	s.mu.Unlock()
	return dc, nil
}

func (s *sockets) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *sockets) first() *deadableConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[0]
}

// TestActiveMigration moves a session to a new socket in the middle of a
// transfer: the same session finishes the file in one attempt.
func TestActiveMigration(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	socks := &sockets{}
	c.dialHook = func(o *dialOptions) { o.PacketConn = socks.open }
	s := connect(t, ctx, c)
	path := filepath.Join(t.TempDir(), "big.bin")
	data := writeRandom(t, path, 8<<20, 9)
	var once sync.Once
	var migrateErr error
	hook := func(_ string, _ int, off int64) {
		if off >= 3<<20 {
			once.Do(func() {
				migrateErr = s.Migrate(ctx)
				socks.first().dead.Store(true) // the old path is gone for good
			})
		}
	}
	var n atomic.Int64
	st, err := s.sendFile(ctx, sendItem{path: path, name: "big.bin"}, SendOptions{testHookChunkRead: hook}, &recordingFile{}, &n)
	if migrateErr != nil {
		t.Fatalf("Migrate: %v", migrateErr)
	}
	if err != nil || st.Attempts != 1 {
		t.Fatalf("send across the migration: attempts %d, err %v; want 1 attempt, no error", st.Attempts, err)
	}
	if socks.count() != 2 {
		t.Errorf("%d sockets used, want 2", socks.count())
	}
	assertRestores(t, ctx, s, "big.bin", data) // over the new path, in the same session
}

package quiccli

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quic"
)

// deadableConn is a UDP socket a test can cut off, as when the address it
// is bound to disappears after a network change: from then on nothing it
// sends arrives and nothing reaches it.
// It implements net.PacketConn only, so quic-go cannot go around it
// through the *net.UDPConn's message methods.
type deadableConn struct {
	udp      *net.UDPConn
	dead     atomic.Bool
	dieAfter int64        // > 0: dies once it has carried this many bytes
	carried  atomic.Int64 // bytes sent and received
}

// carry counts n bytes through the socket and reports whether it is dead.
func (c *deadableConn) carry(n int) bool {
	if c.dead.Load() {
		return true
	}
	if c.dieAfter > 0 && c.carried.Add(int64(n)) >= c.dieAfter {
		c.dead.Store(true)
	}
	return false
}

func (c *deadableConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.carry(len(p)) {
		return len(p), nil // lost on the way
	}
	return c.udp.WriteTo(p, addr)
}

func (c *deadableConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.udp.ReadFrom(p)
		if err != nil || !c.carry(n) {
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
	dieFirstAfter int64 // > 0: the first socket dies after carrying this many bytes
	bornDead      int   // > 0: the socket opened this many-th is dead from the start
	mu            sync.Mutex
	conns         []*deadableConn
}

func (s *sockets) open() (net.PacketConn, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	dc := &deadableConn{udp: c}
	s.mu.Lock()
	if len(s.conns) == 0 {
		dc.dieAfter = s.dieFirstAfter
	}
	if len(s.conns)+1 == s.bornDead {
		dc.dead.Store(true)
	}
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
	if socks.count() != 3 { // the first, and the two a move takes (Migrate)
		t.Errorf("%d sockets used, want 3", socks.count())
	}
	assertRestores(t, ctx, s, "big.bin", data) // over the new path, in the same session
}

// onlyWatchdog makes the client's sessions notice a silent path after
// 500 ms, and stretches quic-go's idle timeout out of a test's reach: a
// dead path is then left to the watchdog alone.
func onlyWatchdog(c *Client, socks *sockets) {
	c.Stall = 500 * time.Millisecond
	c.dialHook = func(o *dialOptions) {
		o.PacketConn = socks.open
		o.QUICConfig = func(q *quic.Config) { q.MaxIdleTimeout = 10 * time.Minute }
	}
}

// TestStalledPathMovesRestore: the path of a restore dies for good a
// quarter of the way in (nothing arrives, nothing leaves). The watchdog
// notices the silence and moves the same session to a new socket; the
// restore finishes in it.
func TestStalledPathMovesRestore(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "big.bin")
	data := writeRandom(t, path, 8<<20, 21)
	sendPaths(t, ctx, connect(t, ctx, c), SendOptions{Paths: []string{path}})

	socks := &sockets{dieFirstAfter: 2 << 20}
	onlyWatchdog(c, socks)
	var notices syncBuffer
	c.Err = &notices
	s := connect(t, ctx, c)
	assertRestores(t, ctx, s, "big.bin", data)
	if socks.count() != 3 || !socks.first().dead.Load() {
		t.Errorf("%d sockets used (first dead: %v), want 3 (a move takes two): the session should have moved once", socks.count(), socks.first().dead.Load())
	}
	if !strings.Contains(notices.String(), "moved to a new socket") {
		t.Errorf("notices %q do not say the connection moved", notices.String())
	}
	if s.Err() != nil {
		t.Errorf("session ended: %v", s.Err())
	}
}

// TestStalledPathSend: the path of an upload dies for good at 30%. The
// watchdog notices, and the upload carries on either in the same session
// on a new socket, or (bornDead: the new socket cannot reach the server
// either) after the session ends and send reconnects and resumes at once,
// long before the idle timeout (here out of reach). Either way within the
// resend bound. quic-go probes a new path only while its congestion window
// has room; on loopback the upload is held by flow control rather than by
// the window, so the move can succeed here; over a WAN it usually cannot.
func TestStalledPathSend(t *testing.T) {
	for _, tc := range []struct {
		name      string
		bornDead  int  // this socket (1-based) is dead from the start
		reconnect bool // the session must end and send reconnect
	}{
		{name: "new socket reaches the server"},
		{name: "new socket cannot either", bornDead: 2, reconnect: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			srv := startServer(t)
			c := newClient(t)
			register(t, ctx, c, srv, "alice")
			path := filepath.Join(t.TempDir(), "big.bin")
			data := writeRandom(t, path, resumeSize, 22)
			socks := &sockets{dieFirstAfter: resumeSize * 3 / 10, bornDead: tc.bornDead}
			onlyWatchdog(c, socks)
			var notices syncBuffer
			c.Err = &notices
			rep := &warnings{}
			res, err := c.SendResilient(ctx, "", "", SendOptions{Paths: []string{path}},
				ReconnectOptions{Attempts: 3, MaxWait: time.Second}, rep)
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != 1 || res.Failed != 0 {
				t.Fatalf("sent %d, failed %d (%v); want 1, 0", res.Sent, res.Failed, res.FirstErr)
			}
			t.Logf("%d sockets; notices: %q; warnings: %q", socks.count(), notices.String(), rep.String())
			if !socks.first().dead.Load() || socks.count() < 2 {
				t.Fatalf("first socket dead: %v, %d sockets: the path never died", socks.first().dead.Load(), socks.count())
			}
			if !strings.Contains(notices.String(), "moving the connection to a new socket") {
				t.Errorf("notices %q: the watchdog did not act", notices.String())
			}
			moved := strings.Contains(notices.String(), "moved to a new socket")
			reconnected := strings.Contains(rep.String(), "new socket could not reach it")
			if moved == reconnected || (tc.reconnect && !reconnected) {
				t.Errorf("moved %v, reconnected after the stall %v; want exactly one (reconnected: %v)", moved, reconnected, tc.reconnect)
			}
			assertResendBound(t, res.Bytes, resumeSize)
			c.dialHook = nil
			assertRestores(t, ctx, connect(t, ctx, c), "big.bin", data)
		})
	}
}

// warnings is a Reporter that keeps its warnings.
type warnings struct {
	nopReporter
	syncBuffer
}

func (w *warnings) Warn(format string, args ...any) {
	fmt.Fprintf(&w.syncBuffer, format+"\n", args...)
}

// TestWatchdogLeavesIdleSessionsAlone: a healthy session with nothing to
// do hears from the server through keep-alives, so the watchdog never
// fires however long it stays idle.
func TestWatchdogLeavesIdleSessionsAlone(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	socks := &sockets{}
	onlyWatchdog(c, socks)
	var notices syncBuffer
	c.Err = &notices
	s := connect(t, ctx, c)
	time.Sleep(2 * time.Second) // four stall periods, idle
	if s.Err() != nil || socks.count() != 1 || notices.String() != "" {
		t.Fatalf("idle session: err %v, %d sockets, notices %q; want it untouched", s.Err(), socks.count(), notices.String())
	}
	if _, err := s.List(ctx, "", false); err != nil {
		t.Fatalf("List after idling: %v", err)
	}
}

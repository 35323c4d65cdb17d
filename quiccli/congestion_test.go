package quiccli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// The limit tests check only that a transfer was not faster than its
// limit allows: a loaded machine makes it slower, never faster.
const (
	testLimit     = 1 << 20 // bytes per second
	testLimitFile = 3 << 20
)

func checkRate(t *testing.T, what string, n int, d time.Duration) {
	t.Helper()
	rate := float64(n) / d.Seconds()
	t.Logf("%s: %d bytes in %v, %.0f B/s under a limit of %d", what, n, d.Round(time.Millisecond), rate, testLimit)
	if rate > 1.15*testLimit {
		t.Errorf("%s at %.0f B/s, over the limit of %d B/s", what, rate, testLimit)
	}
}

func TestSendLimit(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	c.SendLimit = quic.NewRateLimit(testLimit)
	path := filepath.Join(t.TempDir(), "f.bin")
	data := writeRandom(t, path, testLimitFile, 1)
	s := connect(t, ctx, c)
	start := time.Now()
	res := sendPaths(t, ctx, s, SendOptions{Paths: []string{path}})
	d := time.Since(start)
	if res.Sent != 1 {
		t.Fatalf("sent %d files, want 1: %v", res.Sent, res.FirstErr)
	}
	checkRate(t, "send --limit", len(data), d)
	assertRestores(t, ctx, s, "f.bin", data)
}

func TestRestoreLimit(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "f.bin")
	data := writeRandom(t, path, testLimitFile, 2)
	if res := sendPaths(t, ctx, connect(t, ctx, c), SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Fatalf("sent %d files, want 1: %v", res.Sent, res.FirstErr)
	}
	c.RestoreLimit = testLimit
	s := connect(t, ctx, c)
	start := time.Now()
	assertRestores(t, ctx, s, "f.bin", data)
	checkRate(t, "restore --limit", len(data), time.Since(start))
}

// TestRestoreLimitNeedsBBR: a server running NewReno cannot pace, and
// says so; the client does not restore at a rate it was not asked for.
func TestRestoreLimitNeedsBBR(t *testing.T) {
	ctx := testContext(t)
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.ChunkSize = testChunk; s.Congestion = quic.Reno })
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	c.RestoreLimit = testLimit
	_, _, err := c.Connect(ctx, "", "")
	if err == nil || !strings.Contains(err.Error(), "--cc reno") {
		t.Fatalf("connecting with a restore limit to a server under Reno: %v, want an error naming --cc reno", err)
	}
}

// TestMigrationKeepsController: after a move to a new socket, the QUIC
// module puts NewReno in place of our controller on both ends; both put
// theirs back.
func TestMigrationKeepsController(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	socks := &sockets{}
	c.dialHook = func(o *dialOptions) { o.PacketConn = socks.open }
	s := connect(t, ctx, c)
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	socks.first().dead.Store(true)
	path := filepath.Join(t.TempDir(), "f.bin")
	data := writeRandom(t, path, 1<<20, 3)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Fatalf("sent %d files, want 1: %v", res.Sent, res.FirstErr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.ccMoves.Load() < 1 || srv.Srv.ControllersRestored() < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("after the move: the client put its controller back %d times, the server %d; want both at least once",
				s.ccMoves.Load(), srv.Srv.ControllersRestored())
		}
		time.Sleep(10 * time.Millisecond)
	}
	assertRestores(t, ctx, s, "f.bin", data)
}

func TestCLILimitErrors(t *testing.T) {
	ctx := testContext(t)
	home := filepath.Join(t.TempDir(), "home")
	src := filepath.Join(t.TempDir(), "a.txt")
	if err := os.WriteFile(src, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"send", "--limit", "20", src}, "no unit"},
		{[]string{"send", "--limit", "5mb/s", src}, "upper-case B"},
		{[]string{"restore", "--limit", "10kbit", "a.txt"}, "below the least"},
		{[]string{"--cc", "reno", "send", "--limit", "20mbit", src}, "--limit needs --cc bbr"},
		{[]string{"--cc", "cubic", "send", src}, "--cc"},
	} {
		r := runMain(t, ctx, nil, append([]string{"--home", home}, tc.args...)...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v\nwant exit %d and %q on stderr", r, ExitUsage, tc.want)
		}
	}
}

// TestSlowPaceIsNotAStall: a restore paced so slowly that one chunk takes
// longer than the server's transfer timeout to write (all streams share
// the pace) still finishes: the server gives such a write the time the
// pace needs, not the timeout meant for clients that read nothing.
func TestSlowPaceIsNotAStall(t *testing.T) {
	ctx := testContext(t)
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.ChunkSize = testChunk; s.TransferTimeout = time.Second })
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "f.bin")
	data := writeRandom(t, path, 4*testChunk, 4)
	if res := sendPaths(t, ctx, connect(t, ctx, c), SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Fatalf("sent %d files, want 1: %v", res.Sent, res.FirstErr)
	}
	c.RestoreLimit = 100_000 // 4 chunks at once: each takes 2.6 s to write
	s := connect(t, ctx, c)
	start := time.Now()
	assertRestores(t, ctx, s, "f.bin", data)
	t.Logf("restored %d bytes at 100 kB/s in %v", len(data), time.Since(start).Round(time.Millisecond))
}

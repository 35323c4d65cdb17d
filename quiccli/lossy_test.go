package quiccli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// The lossy link of these tests: 2% of packets lost each way, 10 ms each
// way, and every 50th packet held back 3 ms behind the ones after it.
const (
	lossyDrop      = 0.02
	lossyDelay     = 10 * time.Millisecond
	lossyReorderN  = 50
	lossyReorderBy = 3 * time.Millisecond
)

// proxied is a server, a client registered with it directly, and a proxy
// that the client's sessions go through.
type proxied struct {
	ctx   context.Context
	srv   *srvtest.Server
	c     *Client
	proxy *udpProxy
	log   *serverLog
}

func startProxied(t *testing.T, seed uint64) *proxied {
	t.Helper()
	ctx := testContext(t)
	log := &serverLog{}
	srv := srvtest.Start(t, func(s *quicsrv.Server) {
		s.ChunkSize = testChunk
		var inner slog.Handler = slog.DiscardHandler
		if s.Logger != nil {
			inner = s.Logger.Handler()
		}
		s.Logger = slog.New(&recordingHandler{inner: inner, log: log})
	})
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	p := startUDPProxy(t, srv.Addr, seed)
	c.dialHook = func(o *dialOptions) { o.Server = p.Addr() }
	return &proxied{ctx: ctx, srv: srv, c: c, proxy: p, log: log}
}

// logDrops logs what the proxy forwarded and dropped each way.
func (x *proxied) logDrops(t *testing.T) {
	t.Helper()
	for _, d := range []proxyDirection{toServer, toClient} {
		s := x.proxy.Stats(d)
		t.Logf("proxy %v: forwarded %d packets (%d bytes), dropped %d, held back %d, overflowed %d",
			d, s.Packets, s.Bytes, s.Dropped, s.Reordered, s.Overflow)
	}
}

// retryReporter counts, per file, how often a send started again.
type retryReporter struct {
	nopReporter
	mu    sync.Mutex
	files map[string]*recordingFile
}

func (r *retryReporter) File(name string, _ int64) FileProgress {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.files == nil {
		r.files = map[string]*recordingFile{}
	}
	f := &recordingFile{}
	r.files[name] = f
	return f
}

func (r *retryReporter) retries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, f := range r.files {
		f.mu.Lock()
		n += f.retries
		f.mu.Unlock()
	}
	return n
}

func checkRestored(t *testing.T, out string, want map[string][]byte) {
	t.Helper()
	for rel, data := range want {
		got, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(rel)))
		if err != nil {
			t.Errorf("restored %s: %v", rel, err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("restored %s differs from the original (%d bytes, want %d)", rel, len(got), len(data))
		}
	}
}

// TestSendOverLossyLink sends a large file and a small tree over a link
// that loses, delays and reorders packets: QUIC repairs the losses below
// the application, so no file is sent twice and the bytes stored are the
// bytes sent.
func TestSendOverLossyLink(t *testing.T) {
	t.Parallel() // bound by the link's latency, not by the CPU
	x := startProxied(t, 2)
	x.proxy.SetLink(lossyDrop, lossyDelay, lossyReorderN, lossyReorderBy)

	root := filepath.Join(t.TempDir(), "lossy")
	want := map[string][]byte{}
	sizes := map[string]int{
		"big.bin":       8 << 20,
		"empty":         0,
		"one":           1,
		"chunk":         testChunk,
		"chunk-plus-1":  testChunk + 1,
		"sub/a.txt":     1000,
		"sub/deeper/b":  70000,
		"sub/deeper/cd": 5,
	}
	var total int64
	seed := uint64(100)
	for name, size := range sizes {
		seed++
		want[name] = writeRandom(t, filepath.Join(root, filepath.FromSlash(name)), size, seed)
		total += int64(size)
	}

	start := time.Now()
	s := connect(t, x.ctx, x.c)
	t.Logf("handshake through the lossy link: %v", time.Since(start))
	rep := &retryReporter{}
	res := s.Send(x.ctx, SendOptions{Paths: []string{root}}, rep)
	ratio := float64(res.Bytes) / float64(total)
	t.Logf("sent %d files, %d bytes for %d of file (%.4f×) in %v (%.2f MB/s)",
		res.Sent, res.Bytes, total, ratio, res.Elapsed, float64(total)/res.Elapsed.Seconds()/1e6)
	x.logDrops(t)
	if res.Sent != entriesOf(sizes)+1 || res.Failed != 0 {
		t.Fatalf("send: sent %d, failed %d (%v); want %d (and lossy itself), 0", res.Sent, res.Failed, res.FirstErr, entriesOf(sizes))
	}
	if ratio > 1.05 {
		t.Errorf("sent %d bytes for %d bytes of files: %.3f×, over 1.05×", res.Bytes, total, ratio)
	}
	if n := rep.retries(); n != 0 {
		t.Errorf("%d files were sent again; loss below QUIC should cause no resend", n)
	}
	for _, d := range []proxyDirection{toServer, toClient} {
		if st := x.proxy.Stats(d); st.Dropped == 0 || st.Reordered == 0 || st.Overflow != 0 {
			t.Errorf("proxy %v dropped %d, held back %d, overflowed %d: want drops and reordering, no overflow", d, st.Dropped, st.Reordered, st.Overflow)
		}
	}

	// Read it back over a clean link: this test is about the send.
	x.proxy.SetLink(0, 0, 0, 0)
	out := filepath.Join(t.TempDir(), "out")
	rres := restoreAll(t, x.ctx, s, "lossy", out)
	if rres.Files != len(sizes) || rres.Failed != 0 {
		t.Errorf("restore: %d files, %d failed; want %d, 0", rres.Files, rres.Failed, len(sizes))
	}
	checkRestored(t, out, want)
}

// TestRestoreOverLossyLink restores a file over the lossy link.
func TestRestoreOverLossyLink(t *testing.T) {
	t.Parallel()
	x := startProxied(t, 3)
	const size = 4 << 20
	path := filepath.Join(t.TempDir(), "r.bin")
	data := writeRandom(t, path, size, 77)
	s := connect(t, x.ctx, x.c)
	if res := s.Send(x.ctx, SendOptions{Paths: []string{path}}, nopReporter{}); res.Sent != 1 {
		t.Fatalf("send over the clean link: sent %d (%v)", res.Sent, res.FirstErr)
	}

	x.proxy.SetLink(lossyDrop, lossyDelay, lossyReorderN, lossyReorderBy)
	before := x.proxy.Stats(toClient)
	out := filepath.Join(t.TempDir(), "out")
	start := time.Now()
	rres := restoreAll(t, x.ctx, s, "r.bin", out)
	elapsed := time.Since(start)
	after := x.proxy.Stats(toClient)
	t.Logf("restored %d bytes through the lossy link in %v (%.2f MB/s); server→client: %d packets forwarded, %d dropped, %d held back",
		size, elapsed, size/elapsed.Seconds()/1e6, after.Packets-before.Packets, after.Dropped-before.Dropped, after.Reordered-before.Reordered)
	x.logDrops(t)
	if rres.Files != 1 || rres.Failed != 0 {
		t.Fatalf("restore: %d files, %d failed; want 1, 0", rres.Files, rres.Failed)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Errorf("restored bytes differ from the original")
	}
	if after.Dropped == before.Dropped {
		t.Errorf("the proxy dropped nothing server→client during the restore")
	}
}

// TestNATRebindingMidTransfer moves the client to a new source port twice
// in the middle of a send, as a NAT that forgets its mapping would: QUIC
// validates the new path and carries on, so the same session finishes the
// file in one attempt.
func TestNATRebindingMidTransfer(t *testing.T) {
	x := startProxied(t, 4)
	x.proxy.SetDelay(toServer, time.Millisecond)
	x.proxy.SetDelay(toClient, time.Millisecond)

	const size = 16 << 20
	path := filepath.Join(t.TempDir(), "nat.bin")
	data := writeRandom(t, path, size, 5)
	mark := x.log.len()
	s := connect(t, x.ctx, x.c)

	var mu sync.Mutex
	var rebinds []int64 // offsets read when the rebinds happened
	hook := func(_ string, _ int, off int64) {
		mu.Lock()
		defer mu.Unlock()
		if (len(rebinds) == 0 && off >= size*3/10) || (len(rebinds) == 1 && off >= size*7/10) {
			if n := x.proxy.Rebind(); n != 1 {
				t.Errorf("Rebind moved %d client addresses, want 1", n)
			}
			rebinds = append(rebinds, off)
		}
	}
	rep := &retryReporter{}
	res := s.Send(x.ctx, SendOptions{Paths: []string{path}, testHookChunkRead: hook}, rep)
	ratio := float64(res.Bytes) / size
	t.Logf("sent %d bytes for %d (%.4f×) in %v, rebinding at offsets %v", res.Bytes, size, ratio, res.Elapsed, rebinds)
	x.logDrops(t)
	if res.Sent != 1 || res.Failed != 0 {
		t.Fatalf("send across rebindings: sent %d, failed %d (%v); want 1, 0", res.Sent, res.Failed, res.FirstErr)
	}
	if n := rep.retries(); n != 0 {
		t.Errorf("the file took %d attempts, want 1", n+1)
	}
	if ratio > 1.05 {
		t.Errorf("sent %d bytes for a %d-byte file: %.3f×, over 1.05×", res.Bytes, size, ratio)
	}
	if len(rebinds) != 2 {
		t.Fatalf("rebound %d times, want 2", len(rebinds))
	}
	if err := s.Err(); err != nil {
		t.Fatalf("the session ended: %v", err)
	}

	// The server followed: each new port carried data to it, and the
	// server sent to each new port. The client never dialled again.
	ups := x.proxy.Upstreams()
	if len(ups) != 1 {
		t.Fatalf("the proxy saw %d client addresses, want 1 (the client must not redial)", len(ups))
	}
	for i, up := range ups[0] {
		t.Logf("upstream %d (%s): to server %d packets (%d bytes), from server %d packets (%d bytes)",
			i, up.Local, up.Sent.Load(), up.SentBytes.Load(), up.Received.Load(), up.ReceivedBytes.Load())
	}
	if len(ups[0]) != 3 {
		t.Fatalf("%d upstream sockets, want 3", len(ups[0]))
	}
	for i, up := range ups[0][1:] {
		if up.SentBytes.Load() < testChunk || up.Received.Load() == 0 {
			t.Errorf("after rebinding %d the server got %d bytes from %s and sent it %d packets: it did not follow",
				i+1, up.SentBytes.Load(), up.Local, up.Received.Load())
		}
	}
	// One connection from the server's point of view: one session, which
	// it logs under the address it was accepted from, and no other
	// address, no second handshake, no connection closed.
	var sessions, closes int
	remotes := map[string]int{}
	for _, line := range x.log.since(mark) {
		switch line.msg {
		case "session started":
			sessions++
		case "closing connection":
			closes++
		}
		if r, ok := line.attrs["remote"]; ok {
			remotes[r]++
		}
	}
	t.Logf("server log since connect: %d sessions started, %d connections closed, remotes %v", sessions, closes, remotes)
	if sessions != 1 || closes != 0 {
		t.Errorf("the server started %d sessions and closed %d connections during the send, want 1 and 0", sessions, closes)
	}
	if len(remotes) != 1 || remotes[ups[0][0].Local] == 0 {
		t.Errorf("the server logged remotes %v, want only %s", remotes, ups[0][0].Local)
	}

	// The same session, on the third port, still restores.
	out := filepath.Join(t.TempDir(), "out")
	restoreAll(t, x.ctx, s, "nat.bin", out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Errorf("restored bytes differ from the original")
	}
}

// serverLog records the messages the server logs, with their attributes.
type serverLog struct {
	mu    sync.Mutex
	lines []serverLogLine
}

type serverLogLine struct {
	msg   string
	attrs map[string]string
}

func (l *serverLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// since returns the lines logged after the first n.
func (l *serverLog) since(n int) []serverLogLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines[n:])
}

// recordingHandler copies each record into a serverLog, and passes it on.
type recordingHandler struct {
	inner slog.Handler
	attrs []slog.Attr
	log   *serverLog
}

func (h *recordingHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l) || l >= slog.LevelInfo
}

func (h *recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	line := serverLogLine{msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		line.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		line.attrs[a.Key] = a.Value.String()
		return true
	})
	h.log.mu.Lock()
	h.log.lines = append(h.log.lines, line)
	h.log.mu.Unlock()
	if h.inner.Enabled(ctx, r.Level) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

func (h *recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recordingHandler{inner: h.inner.WithAttrs(as), attrs: append(slices.Clip(h.attrs), as...), log: h.log}
}

func (h *recordingHandler) WithGroup(name string) slog.Handler {
	return &recordingHandler{inner: h.inner.WithGroup(name), attrs: h.attrs, log: h.log}
}

package quicsrv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
)

// probe is a well-behaved client's round: register, upload, restore,
// each within bound. It returns what went wrong, or nil.
func (w *world) probe(t *testing.T, i int, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	conn, err := dialConnCtx(ctx, w.srv)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	c := &rawClient{t: t, srv: w.srv, conn: conn}
	defer c.close()
	if c.ctrl, err = conn.OpenStreamSync(ctx); err != nil {
		return fmt.Errorf("control stream: %w", err)
	}
	c.mr = proto.NewMessageReader(c.ctrl)
	cs := conn.ConnectionState().TLS
	if c.ekm, err = cs.ExportKeyingMaterial(proto.ExporterLabel, nil, proto.ExporterLen); err != nil {
		return err
	}
	done := make(chan struct{})
	var name string
	var data []byte
	go func() {
		defer close(done)
		c.register(goodName, w.key)
		name, data = fmt.Sprintf("probe-%d", i), randBytes(200_000+i)
		if res := c.upload(name, data); res.Status != proto.ResultStored {
			t.Errorf("probe %d: upload %+v", i, res)
		}
		if _, got := c.restore(name, 0); !bytes.Equal(got, data) {
			t.Errorf("probe %d: restore differs", i)
		}
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("probe %d did not finish within %v", i, bound)
	}
}

// TestStrangersCannotLockOut: a flood of connections that never
// authenticate (50 a second from one address, each kept open) cannot keep
// a registered client out: strangers only push out older strangers, their
// windows come out of memory set aside at start, and the refusals cost a
// few log lines, not one each. (At fda84ac each took 4 MiB of the budget,
// and the 129th connection, and every one after, was refused.)
func TestStrangersCannotLockOut(t *testing.T) {
	logs, logger := newLogBuffer(t, slog.LevelInfo)
	w := newWorld(t, func(s *quicsrv.Server) { s.Logger = logger })
	srv := w.srv

	var mu sync.Mutex
	var held []*quic.Conn
	var pushedOut atomic.Int32
	flood := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(flood)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for range 200 { // 4 s at 50 a second
			<-tick.C
			conn, err := dialConn(t, srv, proto.ALPN)
			if err != nil {
				continue // refused during its handshake: fine
			}
			go func() {
				<-conn.Context().Done()
				var ae *quic.ApplicationError
				if errors.As(context.Cause(conn.Context()), &ae) && ae.Remote && proto.ErrorCode(ae.ErrorCode) == proto.CodeLimit {
					pushedOut.Add(1)
				}
			}()
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.CloseWithError(0, "")
		}
	})
	probes := 0
	for {
		select {
		case <-flood:
		default:
			if err := w.probe(t, probes, 5*time.Second); err != nil {
				t.Fatalf("a registered client during the flood: %v (sessions %d)", err, quicsrv.SessionCount(srv.Srv))
			}
			probes++
			time.Sleep(200 * time.Millisecond)
			continue
		}
		break
	}
	if err := w.probe(t, probes, 5*time.Second); err != nil {
		t.Fatalf("a registered client after the flood: %v", err)
	}
	mu.Lock()
	n := len(held)
	mu.Unlock()
	t.Logf("%d connections held, %d pushed out, %d probes served; %d sessions at the end", n, pushedOut.Load(), probes+1, quicsrv.SessionCount(srv.Srv))
	if n < 150 || pushedOut.Load() < int32(n-quicsrv.DefaultMaxHandshakesIP-5) {
		t.Errorf("%d connections made, %d pushed out: want most made and all but %d pushed out", n, pushedOut.Load(), quicsrv.DefaultMaxHandshakesIP)
	}
	took := time.Since(start)
	if lines, most := strings.Count(logs.String(), "had not authenticated"), 1+int(took/(10*time.Second)); lines == 0 || lines > most {
		t.Errorf("%d log lines for %d connections pushed out in %v, want 1 to %d (one per 10 s)", lines, pushedOut.Load(), took.Round(time.Second), most)
	}
}

// TestIdleSessionsEnd: a session with nothing to do, whose client does
// nothing in any session either, is closed after IdleSession, and what
// its window grew to is given back. A session kept while another of the
// same client works (a parallel connection) is not.
func TestIdleSessionsEnd(t *testing.T) {
	const idle = 400 * time.Millisecond
	w := newWorld(t, func(s *quicsrv.Server) { s.IdleSession = idle })
	a, b := w.mallory(t), w.mallory(t)
	// a works for three idle periods, in slow steps; b waits beside it.
	data := randBytes(8 << 20)
	r := a.startUpload("big", data)
	frames := a.chunkFrames(r.Xfer, r.UploadID, data, quicsrv.DefaultChunkSize)
	s := a.openData()
	start := time.Now()
	for _, f := range frames {
		if _, err := s.Write(f); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * idle / time.Duration(len(frames)))
	}
	s.Close()
	if res := a.finishUpload(r.Xfer, data); res.Status != proto.ResultStored {
		t.Fatalf("upload: %+v", res)
	}
	if err := context.Cause(b.conn.Context()); err != nil {
		t.Fatalf("the idle session beside a busy one was closed after %v: %v", time.Since(start), err)
	}
	if quicsrv.ClientMemoryInUse(w.srv.Srv, a.id) == 0 {
		t.Fatalf("the upload grew no window: the test shows nothing")
	}
	// Now both are idle: both end, with code 0, and give their memory back.
	for _, c := range []*rawClient{a, b} {
		ae := c.expectClosed(proto.CodeNoError)
		if ae.ErrorMessage != "idle" {
			t.Errorf("closed with %q, want \"idle\"", ae.ErrorMessage)
		}
	}
	waitFor(t, "the client's memory to be given back", func() bool { return quicsrv.ClientMemoryInUse(w.srv.Srv, a.id) == 0 })
	w.healthy(t)
}

// TestClientsShareTheBudget: clients that stall their chunks half-way on
// every stream, and others idle with grown windows, hold at most their
// share each, and give it back within the chunk stall time; a client that
// comes meanwhile is served.
func TestClientsShareTheBudget(t *testing.T) {
	const share = 32 << 20 // half for chunk buffers: over the floor of 8 MiB, a buffer for each stream
	w := newWorld(t, func(s *quicsrv.Server) {
		s.ClientMemory = share
		s.TransferTimeout = 3 * time.Second // and the chunk stall
	})
	var greedy []*rawClient
	for i := range 3 { // three clients, each with its own share
		greedy = append(greedy, registered(t, w.srv, fmt.Sprintf("greedy-%d", i), w.bad))
	}
	for i, c := range greedy {
		// Every stream starts a chunk and stops half-way: each holds a
		// chunk buffer until the stall ends its connection.
		r := c.startUpload(fmt.Sprintf("stall-%d", i), randBytes(16<<20))
		frame := c.frame(r.Xfer, r.UploadID, 0, randBytes(quicsrv.DefaultChunkSize))
		for range 8 {
			s := c.openData()
			go s.Write(frame[:len(frame)/2]) // blocks once the share is used: the server stops reading
		}
	}
	for _, c := range greedy {
		waitFor(t, "the stalled chunks to hold their share", func() bool {
			return quicsrv.ClientMemoryInUse(w.srv.Srv, c.id) >= share/4
		})
	}
	time.Sleep(200 * time.Millisecond) // let them try for more
	for _, c := range greedy {
		if n := quicsrv.ClientMemoryInUse(w.srv.Srv, c.id); n > share {
			t.Errorf("one client holds %d bytes, over its share of %d", n, share)
		}
	}
	if err := w.probe(t, 0, 5*time.Second); err != nil {
		t.Fatalf("a client beside the stalled ones: %v", err)
	}
	for _, c := range greedy {
		ae := c.expectClosed(proto.CodeAborted)
		if !strings.Contains(ae.ErrorMessage, "middle of a chunk") {
			t.Errorf("a stalled connection closed with %q", ae.ErrorMessage)
		}
	}
	waitFor(t, "the budget to be given back", func() bool { return quicsrv.BudgetInUse(w.srv.Srv) == 0 })
	w.healthy(t)
}

// TestUnreadRestores: restores the client never reads hold no more than
// the client's share, in buffers charged to the budget (at fda84ac about
// 24 MiB a session, outside it), and once the client has read nothing
// for the transfer timeout its connection is closed and all is given
// back.
func TestUnreadRestores(t *testing.T) {
	const share = 16 << 20
	w := newWorld(t, func(s *quicsrv.Server) {
		s.ClientMemory = share
		s.TransferTimeout = 2 * time.Second
	})
	up := w.mallory(t)
	data := randBytes(24 << 20)
	if res := up.upload("big", data); res.Status != proto.ResultStored {
		t.Fatalf("upload: %+v", res)
	}
	up.close()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var lazy []*rawClient
	for range 6 { // 6 sessions, each asking for the file 4 times, reading nothing
		c := w.mallory(t)
		for range 4 {
			req := c.nextReq()
			c.send(&proto.RestoreRequest{Req: req, Name: "big"})
		}
		lazy = append(lazy, c)
	}
	waitFor(t, "the restores to fill the client's share", func() bool {
		return quicsrv.ClientMemoryInUse(w.srv.Srv, lazy[0].id) >= share/4
	})
	time.Sleep(500 * time.Millisecond) // let them try for more
	if n := quicsrv.ClientMemoryInUse(w.srv.Srv, lazy[0].id); n > share {
		t.Errorf("unread restores hold %d bytes, over the client's share of %d", n, share)
	}
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	grown := int64(during.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap in use grew by %d MiB for 24 unread restores in 6 sessions (share %d MiB)", grown>>20, share>>20)
	if grown > share+64<<20 {
		t.Errorf("the heap grew by %d MiB, more than the share and 64 MiB for the rest", grown>>20)
	}
	if err := w.probe(t, 0, 5*time.Second); err != nil {
		t.Fatalf("a client beside the unread restores: %v", err)
	}
	for _, c := range lazy {
		ae := c.expectClosed(proto.CodeAborted)
		if !strings.Contains(ae.ErrorMessage, "read no restored data") {
			t.Errorf("an unread restore's connection closed with %q", ae.ErrorMessage)
		}
	}
	waitFor(t, "the budget to be given back", func() bool { return quicsrv.BudgetInUse(w.srv.Srv) == 0 })
	w.healthy(t)
}

// TestRetryUnderLoad: over half of MaxHandshakes connections waiting to
// authenticate, a new connection must prove its address (QUIC Retry)
// before the server keeps state for it; a well-behaved client does so
// without noticing and is served.
func TestRetryUnderLoad(t *testing.T) {
	w := newWorld(t, func(s *quicsrv.Server) { s.MaxHandshakes = 4 })
	if quicsrv.UnderLoad(w.srv.Srv) {
		t.Fatal("under load before the flood")
	}
	for range 3 {
		dialRaw(t, w.srv) // authenticates never
	}
	waitFor(t, "three connections waiting", func() bool { return quicsrv.UnderLoad(w.srv.Srv) })
	if n := quicsrv.Retries(w.srv.Srv); n != 0 {
		t.Fatalf("%d Retries asked before the server was under load", n)
	}
	if err := w.probe(t, 0, 5*time.Second); err != nil {
		t.Fatalf("a client while new connections must answer a Retry: %v", err)
	}
	if n := quicsrv.Retries(w.srv.Srv); n == 0 {
		t.Fatal("the probe was served without being asked for a Retry")
	}
}

package quicsrv_test

// Who gets in, and how many: registration modes with invite tokens,
// connection limits, the memory budget and the transfer timeout.

import (
	"bytes"
	"context"
	"crypto/rsa"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

func newInvite(t *testing.T, srv *srvtest.Server, uses int, ttl time.Duration) string {
	t.Helper()
	book, err := store.OpenInvites(t.Context(), srv.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer book.Close()
	token, _, err := book.Create(t.Context(), ttl, uses, "test")
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func clientCount(t *testing.T, srv *srvtest.Server) int {
	t.Helper()
	n, err := srv.Store.ClientCount(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRegistrationModes(t *testing.T) {
	a, b := testKeys(t)
	type attempt struct {
		name, invite string
		key          *rsa.PrivateKey
		code         proto.ErrorCode // CodeNoError: welcomed
		msg          string          // part of the close reason
	}
	tests := []struct {
		name     string
		mode     store.Admission
		attempts func(good, expired string) []attempt
	}{
		{"open", store.AdmitAll, func(good, expired string) []attempt {
			return []attempt{
				{name: "alice", key: a},
				{name: "bob", key: b, invite: "ignored"},
			}
		}},
		{"closed", store.AdmitNone, func(good, expired string) []attempt {
			return []attempt{
				{name: "alice", key: a, code: proto.CodeRegistrationClosed, msg: "accepts no new clients"},
				{name: "alice", key: a, invite: good, code: proto.CodeRegistrationClosed, msg: "accepts no new clients"},
				{name: "veteran", key: b}, // registered before the server closed
				// A stranger learns nothing about which names exist.
				{name: "veteran", key: a, code: proto.CodeRegistrationClosed, msg: "accepts no new clients"},
			}
		}},
		{"token", store.AdmitInvited, func(good, expired string) []attempt {
			return []attempt{
				{name: "alice", key: a, code: proto.CodeRegistrationClosed, msg: "only with an invite"},
				{name: "alice", key: a, invite: store.InvitePrefix + strings.Repeat("z", 32), code: proto.CodeRegistrationClosed, msg: "unknown, used up, expired"},
				{name: "alice", key: a, invite: expired, code: proto.CodeRegistrationClosed, msg: "unknown, used up, expired"},
				{name: "veteran", key: a, code: proto.CodeRegistrationClosed, msg: "only with an invite"},
				{name: "veteran", key: a, invite: good, code: proto.CodeNameTaken, msg: "registered with another key"},
				{name: "alice", key: a, invite: good}, // the use given back above
				{name: "alice", key: a},               // registering again needs no invite
				{name: "carol", key: b, invite: good, code: proto.CodeRegistrationClosed, msg: "unknown, used up, expired"},
				{name: "veteran", key: b},
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mode := store.AdmitAll
			srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Registration = mode })
			registered(t, srv, "veteran", b).close()
			good := newInvite(t, srv, 1, time.Hour)
			expired := newInvite(t, srv, 1, time.Nanosecond)
			mode = tt.mode
			srv.Restart()
			for i, at := range tt.attempts(good, expired) {
				before := clientCount(t, srv)
				c := dialRaw(t, srv)
				m := c.registerMsg(at.name, at.key)
				m.Invite = at.invite
				c.send(m)
				if at.code == proto.CodeNoError {
					c.welcomed(at.key)
					c.close()
					continue
				}
				ae := c.expectClosed(at.code)
				if !strings.Contains(ae.ErrorMessage, at.msg) {
					t.Errorf("attempt %d: close reason %q, want it to contain %q", i, ae.ErrorMessage, at.msg)
				}
				if at.invite != "" && strings.Contains(ae.ErrorMessage, at.invite) {
					t.Errorf("attempt %d: the close reason repeats the invite", i)
				}
				if after := clientCount(t, srv); after != before {
					t.Errorf("attempt %d: refused, yet clients went from %d to %d", i, before, after)
				}
			}
		})
	}
}

func TestConnectionLimits(t *testing.T) {
	w := newWorld(t, func(s *quicsrv.Server) { s.MaxConnsPerClient = 2; s.MaxConns = 4 })
	srv := w.srv

	// Per client: two sessions, the third is refused after its handshake,
	// and another client is not affected.
	m1, m2 := w.mallory(t), w.mallory(t)
	c := dialRaw(t, srv)
	c.send(c.reconnectMsg(m1.id, w.bad))
	ae := c.expectClosed(proto.CodeLimit)
	if !strings.Contains(ae.ErrorMessage, "2 connections open") {
		t.Errorf("close reason %q does not give the limit", ae.ErrorMessage)
	}
	w.healthy(t)
	m2.close()
	waitFor(t, "the closed session to end", func() bool { return quicsrv.SessionCount(srv.Srv) == 1 })
	m3 := w.mallory(t) // room again
	m3.list("", 0)

	// In total: m1, m3 and two connections that have not authenticated
	// fill the four places. One more pushes out the oldest of those two
	// (strangers only ever push out strangers)...
	idle1, idle2 := dialRaw(t, srv), dialRaw(t, srv)
	waitFor(t, "four sessions", func() bool { return quicsrv.SessionCount(srv.Srv) == 4 })
	extra := dialRaw(t, srv)
	ae = idle1.expectClosed(proto.CodeLimit)
	if !strings.Contains(ae.ErrorMessage, "connection limit") {
		t.Errorf("close reason %q does not say why", ae.ErrorMessage)
	}
	// ...and authenticates in its place; with the four places taken by
	// authenticated sessions, one more is refused.
	idle2.close()
	extra.register(goodName, w.key)
	g2 := registered(t, srv, goodName, w.key)
	waitFor(t, "four sessions", func() bool { return quicsrv.SessionCount(srv.Srv) == 4 })
	over, err := dialConn(t, srv, proto.ALPN)
	if err != nil {
		t.Fatal(err)
	}
	ae = expectConnClosed(t, over, proto.CodeLimit)
	if !strings.Contains(ae.ErrorMessage, "4 connections open") {
		t.Errorf("close reason %q does not give the limit", ae.ErrorMessage)
	}
	extra.close()
	g2.close()
	waitFor(t, "the sessions to end", func() bool { return quicsrv.SessionCount(srv.Srv) == 2 })
	w.healthy(t)
	m1.close()
	m3.close()
	w.restoreAll(t)
}

// TestMemoryBudget runs uploads through a budget far smaller than what
// they move: windows stop growing and chunk readers wait, the uploads
// finish, neither the server's budget nor a client's share is ever
// passed, and every byte is given back at the end.
func TestMemoryBudget(t *testing.T) {
	const chunk = 64 << 10
	const maxConns = 4
	// Half of it for chunk buffers: a buffer for each of a session's 8
	// streams at once, the least a share may be (the server raises it to
	// that).
	const share = 2 * 8 * (chunk + proto.TagSize)
	budget := int64(maxConns*quicsrv.InitialConnWindow + quicsrv.MinTransferMemory)
	w := newWorld(t, func(s *quicsrv.Server) {
		s.ChunkSize, s.MemoryBudget, s.MaxConns, s.ClientMemory = chunk, budget, maxConns, share
	})
	srv := w.srv
	waitFor(t, "the budget to be free", func() bool { return quicsrv.BudgetInUse(srv.Srv) == 0 })

	a, b := w.mallory(t), w.mallory(t)
	data := [][]byte{randBytes(3<<20 + 17), randBytes(2<<20 + 5)}
	done := make(chan error, 2)
	var peak atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				if n := quicsrv.ClientMemoryInUse(srv.Srv, a.id); n > peak.Load() {
					peak.Store(n)
				}
			}
		}
	}()
	for i, rc := range []*rawClient{a, b} {
		go func() {
			defer func() { done <- nil }()
			r := rc.startUpload(fmt.Sprintf("big-%d", i), data[i])
			frames := rc.chunkFrames(r.Xfer, r.UploadID, data[i], chunk)
			// Four streams at once, so readers compete for the budget.
			parts := [4][][]byte{}
			for j, f := range frames {
				parts[j%4] = append(parts[j%4], f)
			}
			var streams []func()
			for _, p := range parts {
				s := rc.openData()
				streams = append(streams, func() { s.Write(bytes.Join(p, nil)); s.Close() })
			}
			for _, f := range streams {
				go f()
			}
			if res := rc.finishUpload(r.Xfer, data[i]); res.Status != proto.ResultStored {
				t.Errorf("upload %d: %+v", i, res)
			}
		}()
	}
	for range 2 {
		<-done
	}
	close(stop)
	if used, limit := quicsrv.BudgetInUse(srv.Srv), budget-maxConns*quicsrv.InitialConnWindow; used > limit {
		t.Errorf("budget in use %d > %d", used, limit)
	}
	if p := peak.Load(); p > share || p == 0 {
		t.Errorf("one client's share peaked at %d bytes, want 1 to %d", p, share)
	}
	for i, rc := range []*rawClient{a, b} {
		_, got := rc.restore(fmt.Sprintf("big-%d", i), 0)
		if !bytes.Equal(got, data[i]) {
			t.Fatalf("restore %d differs", i)
		}
		rc.close()
	}
	waitFor(t, "the budget to be given back", func() bool { return quicsrv.BudgetInUse(srv.Srv) == 0 })
	w.healthy(t)
}

// TestTransferTimeout: an upload that stops receiving is ended, kept for
// resume and reported; the session goes on. A data stream that stops in
// the middle of a chunk ends the connection.
func TestTransferTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	w := newWorld(t, func(s *quicsrv.Server) { s.TransferTimeout = timeout; s.ChunkSize = 1024 })
	m := w.mallory(t)
	data := randBytes(10 * 1024)
	r := m.startUpload("stalled", data)
	m.sendData(m.chunkFrames(r.Xfer, r.UploadID, data[:4096], 1024)...)
	start := time.Now()
	em := m.expectError(r.Req, proto.CodeAborted)
	if el := time.Since(start); el > 20*timeout {
		t.Errorf("stall noticed after %v with a %v timeout", el, timeout)
	}
	if !strings.Contains(em.Message, "kept") {
		t.Errorf("error %q does not say the data is kept", em.Message)
	}
	// Late chunks of the ended transfer are dropped quietly; the session
	// goes on, and a new request resumes after the kept bytes.
	m.sendData(framesAt(m, r.Xfer, r.UploadID, data, 4096, 5120, 1024)...)
	req := m.uploadReq("stalled", data)
	m.send(req)
	ready := expect[*proto.UploadReady](m)
	if len(ready.Missing) != 1 || ready.Missing[0].Off != 4096 {
		t.Fatalf("resume asks for %v, want [4096, 10240)", ready.Missing)
	}
	m.sendData(framesAt(m, ready.Xfer, ready.UploadID, data, 4096, len(data), 1024)...)
	if res := m.finishUpload(ready.Xfer, data); res.Status != proto.ResultStored {
		t.Fatalf("resumed upload: %+v", res)
	}

	// A chunk header, part of its payload, then nothing.
	r = m.startUpload("half-chunk", data)
	f := m.frame(r.Xfer, r.UploadID, 0, data[:1024])
	s := m.openData()
	if _, err := s.Write(f[:proto.ChunkHeaderLen+100]); err != nil {
		t.Fatal(err)
	}
	ae := m.expectClosed(proto.CodeAborted)
	if !strings.Contains(ae.ErrorMessage, "middle of a chunk") {
		t.Errorf("close reason %q", ae.ErrorMessage)
	}
	waitFor(t, "the budget to be given back", func() bool { return quicsrv.BudgetInUse(w.srv.Srv) == 0 })
	w.healthy(t)
}

// framesAt seals data[from:to] as chunks of n bytes at their offsets.
func framesAt(c *rawClient, xfer uint32, id [16]byte, data []byte, from, to, n int) [][]byte {
	var out [][]byte
	for off := from; off < to; off += n {
		out = append(out, c.frame(xfer, id, uint64(off), data[off:min(off+n, to)]))
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTakeOver: a client that reconnects while its old session still has
// an upload of the file open (the server has not noticed the old
// connection is gone) gets that upload: the old session is told it was
// taken over, and the new one resumes after what the old one received.
// An upload of another file, and one of the same name by another client,
// are left alone.
func TestTakeOver(t *testing.T) {
	w := newWorld(t, func(s *quicsrv.Server) { s.ChunkSize = 1024 })
	old := w.mallory(t)
	data := randBytes(8 * 1024)
	r := old.startUpload("x", data)
	other := old.startUpload("y", data)
	old.sendData(old.chunkFrames(r.Xfer, r.UploadID, data[:4096], 1024)...)
	// The good client's upload of the same name.
	good := dialRaw(t, w.srv)
	good.reconnect(w.id, w.key)
	gr := good.startUpload("x", data)
	waitFor(t, "the old session to have written 4 KiB", func() bool {
		return quicsrv.WrittenBytes(w.srv.Srv) == 4096 // only x has data yet
	})

	now := dialRaw(t, w.srv)
	now.reconnect(old.id, w.bad)
	now.send(now.uploadReq("x", data))
	em := old.expectError(r.Req, proto.CodeAborted)
	if !strings.Contains(em.Message, "took over") {
		t.Errorf("old session told %q, want that it was taken over", em.Message)
	}
	ready := expect[*proto.UploadReady](now)
	if ready.UploadID != r.UploadID || len(ready.Missing) != 1 || ready.Missing[0].Off != 4096 {
		t.Fatalf("new session got upload %x missing %v; want %x missing [4096, 8192)", ready.UploadID, ready.Missing, r.UploadID)
	}
	now.sendData(framesAt(now, ready.Xfer, ready.UploadID, data, 4096, len(data), 1024)...)
	if res := now.finishUpload(ready.Xfer, data); res.Status != proto.ResultStored {
		t.Fatalf("taken-over upload: %+v", res)
	}
	// The old session's upload of y, and the good client's x, go on.
	old.sendData(old.chunkFrames(other.Xfer, other.UploadID, data, 1024)...)
	if res := old.finishUpload(other.Xfer, data); res.Status != proto.ResultStored {
		t.Errorf("old session's other upload: %+v", res)
	}
	good.sendData(good.chunkFrames(gr.Xfer, gr.UploadID, data, 1024)...)
	if res := good.finishUpload(gr.Xfer, data); res.Status != proto.ResultStored {
		t.Errorf("other client's upload of the same name: %+v", res)
	}
	for _, c := range []*rawClient{old, now, good} {
		c.close()
	}
	w.healthy(t)
}

// TestResumeKeepsScatteredRanges: an upload kept with scattered ranges is
// resumed, receives one more chunk between them, and is kept again; the
// next resume asks for exactly what is still missing. (The ranges reserved
// by arriving chunks and the ranges written once shared their memory on
// resume, so a chunk between kept ranges could drop a kept range, or count
// bytes as written before they were.)
func TestResumeKeepsScatteredRanges(t *testing.T) {
	const k = 1024
	w := newWorld(t, func(s *quicsrv.Server) { s.ChunkSize = k })
	data := randBytes(12 * k)
	m := w.mallory(t)
	id := m.id
	m.close()
	// kept runs one session: it asks for the file, sends the chunks at
	// offs (in KiB), and drops the connection; the server keeps the upload.
	// It returns the ranges the session was asked for.
	kept := func(offs ...int) []proto.Range {
		t.Helper()
		c := dialRaw(t, w.srv)
		c.reconnect(id, w.bad)
		c.send(c.uploadReq("scattered", data))
		ready := expect[*proto.UploadReady](c)
		for _, o := range offs {
			c.sendData(framesAt(c, ready.Xfer, ready.UploadID, data, o*k, (o+1)*k, k)...)
		}
		waitFor(t, "the chunks to be written", func() bool {
			return quicsrv.WrittenBytes(w.srv.Srv) == uint64(len(offs)*k+int(12*k-missingBytes(ready.Missing)))
		})
		c.close()
		waitFor(t, "the upload to be kept", func() bool { return quicsrv.ActiveUploads(w.srv.Srv) == 0 })
		return ready.Missing
	}
	kept(0, 4, 8) // three ranges: room in their slice for a fourth
	got := kept(2)
	want := []proto.Range{{Off: 1 * k, Len: 3 * k}, {Off: 5 * k, Len: 3 * k}, {Off: 9 * k, Len: 3 * k}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("second session asked for %v, want %v", got, want)
	}
	got = kept()
	want = []proto.Range{{Off: 1 * k, Len: k}, {Off: 3 * k, Len: k}, {Off: 5 * k, Len: 3 * k}, {Off: 9 * k, Len: 3 * k}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("third session asked for %v, want %v", got, want)
	}
	w.healthy(t)
}

// missingBytes sums the lengths of rs.
func missingBytes(rs []proto.Range) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Len
	}
	return n
}

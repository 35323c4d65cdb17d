package quicsrv_test

// Well-behaved sessions through the raw client (restore in detail), and
// the server's life cycle: graceful shutdown and close.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
)

// TestRestore stores files of awkward sizes and several versions, then
// restores them on a new connection and checks every RestoreReady field
// and the reassembled bytes.
func TestRestore(t *testing.T) {
	w := newWorld(t, smallChunks)
	c := registered(t, w.srv, goodName, w.key)
	if c.welcome.ChunkSize != 4096 {
		t.Fatalf("Welcome says chunk size %d, server set 4096", c.welcome.ChunkSize)
	}
	files := map[string][]byte{
		"r/empty":          {},
		"r/one":            {42},
		"r/exact-chunk":    randBytes(4096),
		"r/chunk-plus-one": randBytes(4097),
		"r/multi":          randBytes(3*4096 + 1234),
	}
	stored := map[string]*proto.UploadResult{}
	for name, d := range files {
		stored[name] = c.upload(name, d)
	}
	versions := [][]byte{randBytes(5000), randBytes(3000), randBytes(9000)}
	for i, d := range versions {
		if res := c.upload("r/versions", d); res.Version != uint32(i+1) {
			t.Fatalf("version %d stored as %d", i+1, res.Version)
		}
	}
	// The same content again is recognised without a transfer.
	m := c.uploadReq("r/versions", versions[2])
	c.send(m)
	if r := expect[*proto.UploadReady](c); r.Req != m.Req || r.Status != proto.ReadyUnchanged || r.Version != 3 || r.Xfer != 0 || len(r.Missing) != 0 {
		t.Fatalf("re-upload of identical content: %+v", r)
	}
	c.close()

	c = dialRaw(t, w.srv)
	c.reconnect(w.id, w.key)
	wantMod := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano()
	check := func(name string, version uint32, want []byte, wantVersion uint32) {
		t.Helper()
		rr, got := c.restore(name, version)
		if rr.Name != name || rr.Version != wantVersion || rr.Size != uint64(len(want)) ||
			rr.ModTime != wantMod || rr.Mode != 0o640 ||
			rr.CRC != proto.CksumBytes(want) || rr.SHA256 != sha256.Sum256(want) {
			t.Errorf("RestoreReady for %q v%d: %+v", name, version, rr)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("restored %q v%d: %d bytes differ from the %d stored", name, version, len(got), len(want))
		}
	}
	for name, d := range files {
		check(name, 0, d, stored[name].Version)
	}
	for i, d := range versions {
		check("r/versions", uint32(i+1), d, uint32(i+1))
	}
	check("r/versions", 0, versions[2], 3)
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: "r/versions", Version: 4})
	c.expectError(req, proto.CodeNotFound)
	all := c.list("r/versions", proto.ListAllVersions)
	if len(all) != 3 {
		t.Fatalf("all versions: %d entries", len(all))
	}
	for _, e := range all {
		d := versions[e.Version-1]
		if e.Versions != 3 || e.Size != uint64(len(d)) || e.CRC != proto.CksumBytes(d) || e.ModTime != wantMod || e.Mode != 0o640 {
			t.Errorf("ListEntry %+v", e)
		}
	}
	if latest := c.list("r", 0); len(latest) != len(files)+1 {
		t.Fatalf("latest listing: %d entries, want %d", len(latest), len(files)+1)
	}
	c.close()
	w.restoreAll(t)
}

// TestRestoreGivenUp: a client that releases restores while the server is
// still sending them gets no stray error, keeps its session, and can
// restore the same file completely afterwards.
func TestRestoreGivenUp(t *testing.T) {
	w := newWorld(t, smallChunks)
	c := registered(t, w.srv, goodName, w.key)
	d := randBytes(300 * 4096)
	c.upload("big/file", d)
	c.acceptData()
	for range 5 {
		req := c.nextReq()
		c.send(&proto.RestoreRequest{Req: req, Name: "big/file"})
		rr := expect[*proto.RestoreReady](c)
		c.giveUp(rr.Xfer)
		// A listing right after must be answered cleanly: no Error for
		// the released restore's request in between.
		c.list("big", 0)
	}
	_, got := c.restore("big/file", 0)
	if !bytes.Equal(got, d) {
		t.Fatal("restore after given-up restores returned different bytes")
	}
	c.list("big", 0)
	c.close()
	w.files["big/file"] = d
	w.restoreAll(t)
}

// TestRestoreResume: a RestoreResume gets the bytes outside the ranges it
// has, of the version it names, and only if that version is the content
// the client began with.
func TestRestoreResume(t *testing.T) {
	w := newWorld(t, smallChunks)
	c := registered(t, w.srv, goodName, w.key)
	v1, v2 := randBytes(10*4096+77), randBytes(7*4096)
	c.upload("r/file", v1)
	c.upload("r/file", v2)
	sha1, size := sha256.Sum256(v1), uint64(len(v1))
	for _, have := range [][]proto.Range{
		nil,
		{{Off: 0, Len: 1}},
		{{Off: 0, Len: 4096}},
		{{Off: 0, Len: 5*4096 + 3}, {Off: 6 * 4096, Len: 4096}, {Off: 9 * 4096, Len: 10}},
		{{Off: 4096, Len: 4096}},
		{{Off: 0, Len: size - 1}},
		{{Off: 1, Len: size - 1}},
		{{Off: 0, Len: size}},
	} {
		rr, got := c.resume("r/file", 1, sha1, v1, have)
		if rr.Version != 1 || rr.Size != size || rr.SHA256 != sha1 {
			t.Errorf("resume with %v: RestoreReady %+v", have, rr)
		}
		if !bytes.Equal(got, v1) {
			t.Errorf("resume with %v: the bytes differ", have)
		}
	}
	tests := []struct {
		name string
		m    *proto.RestoreResume
		code proto.ErrorCode
	}{
		{"other content", &proto.RestoreResume{Name: "r/file", Version: 2, SHA256: sha1, Have: []proto.Range{{Off: 0, Len: 4096}}}, proto.CodeNotFound},
		{"beyond the end", &proto.RestoreResume{Name: "r/file", Version: 1, SHA256: sha1, Have: []proto.Range{{Off: 4096, Len: size}}}, proto.CodeNotFound},
		{"no such version", &proto.RestoreResume{Name: "r/file", Version: 3, SHA256: sha1}, proto.CodeNotFound},
		{"no such file", &proto.RestoreResume{Name: "r/none", Version: 1, SHA256: sha1}, proto.CodeNotFound},
		{"bad name", &proto.RestoreResume{Name: "../x", Version: 1, SHA256: sha1}, proto.CodeInvalidName},
	}
	for _, tt := range tests {
		tt.m.Req = c.nextReq()
		c.send(tt.m)
		if e := c.expectError(tt.m.Req, tt.code); e == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
	// The session goes on.
	if _, got := c.restore("r/file", 0); !bytes.Equal(got, v2) {
		t.Error("a restore after the refused resumes returned other bytes")
	}
	c.close()
	w.restoreAll(t) // the world's files (version 1 each), and nothing left in tmp/
}

// TestHugeUploadRequest: an upload of a size the protocol allows but the
// server's disk may not (a 1 PiB sparse temp file) is either accepted or
// refused with an Error; either way nothing is left behind and the session
// goes on.
func TestHugeUploadRequest(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	c := w.mallory(t)
	for _, size := range []uint64{1 << 40, proto.MaxFileSize} {
		m := c.uploadReq("hostile/huge", nil)
		m.Size = size
		c.send(m)
		switch r := expectAny(c).(type) {
		case *proto.UploadReady:
			if r.Req != m.Req || r.Status != proto.ReadySend || len(r.Missing) != 1 || r.Missing[0].Len != size {
				t.Fatalf("UploadReady %+v for a %d-byte file", r, size)
			}
			c.send(&proto.UploadAbort{Xfer: r.Xfer})
			if res := expect[*proto.UploadResult](c); res.Status != proto.ResultDiscarded {
				t.Fatalf("abort: %+v", res)
			}
		case *proto.ErrorMessage:
			if r.Req != m.Req {
				t.Fatalf("Error %+v for req %d", r, m.Req)
			}
			t.Logf("%d bytes refused: %v: %s", size, r.Code, r.Message)
			if r.Code != proto.CodeTooLarge && r.Code != proto.CodeNoSpace {
				t.Errorf("refused with %v; want %v or %v, not a code that invites a retry", r.Code, proto.CodeTooLarge, proto.CodeNoSpace)
			}
		default:
			t.Fatalf("unexpected %v", r.Type())
		}
		tmpEmpty(t, w.srv)
	}
	c.list("", 0)
	c.close()
	w.unchanged(t, before)
	w.healthy(t)
	w.restoreAll(t)
}

// TestUploadTooLargeForDisk: a size the server's file system cannot hold
// (ext4 stops at 16 TiB) is a size beyond the server's limits, CodeTooLarge,
// not an internal error that invites the client to retry.
func TestUploadTooLargeForDisk(t *testing.T) {
	w := newWorld(t, nil)
	c := w.mallory(t)
	m := c.uploadReq("hostile/huge", nil)
	m.Size = proto.MaxFileSize
	c.send(m)
	switch r := expectAny(c).(type) {
	case *proto.UploadReady:
		t.Skip("this file system holds a 1 PiB sparse file")
	case *proto.ErrorMessage:
		if r.Code != proto.CodeTooLarge {
			t.Fatalf("refused with %v (%s); want %v", r.Code, r.Message, proto.CodeTooLarge)
		}
	default:
		t.Fatalf("unexpected %v", r.Type())
	}
}

// inFlight starts an upload of 3 chunks and sends the first.
func inFlight(t *testing.T, w *world, name string) (*rawClient, *proto.UploadReady, []byte) {
	t.Helper()
	c := registered(t, w.srv, goodName, w.key)
	d := randBytes(3 * 4096)
	r := c.startUpload(name, d)
	c.sendData(c.frame(r.Xfer, r.UploadID, 0, d[:4096]))
	return c, r, d
}

func waitShuttingDown(t *testing.T, s *quicsrv.Server) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !quicsrv.ShuttingDown(s) {
		if time.Now().After(deadline) {
			t.Fatal("Shutdown never began")
		}
		time.Sleep(time.Millisecond)
	}
}

// shutdownAsync starts Shutdown with the given grace and returns its
// result channel.
func shutdownAsync(w *world, grace time.Duration) <-chan error {
	errc := make(chan error, 1)
	srv := w.srv.Srv
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		errc <- srv.Shutdown(ctx)
	}()
	return errc
}

// shutdownResult waits for Shutdown to return.
func shutdownResult(t *testing.T, errc <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(within):
		t.Fatalf("Shutdown still running after %v", within)
		return nil
	}
}

// refused checks that the server accepts no new connection.
func refused(t *testing.T, w *world) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if conn, err := dialConnCtx(ctx, w.srv); err == nil {
		conn.CloseWithError(0, "")
		t.Fatal("a new connection was accepted during or after Shutdown")
	}
}

// TestShutdownIdle: Shutdown ends an idle session at once, refuses new
// connections, returns as soon as the session is gone, and keeps what was
// stored.
func TestShutdownIdle(t *testing.T) {
	w := newWorld(t, smallChunks)
	c := registered(t, w.srv, goodName, w.key)
	errc := shutdownAsync(w, ioTimeout)
	c.expectShutdownEnd()
	if err := shutdownResult(t, errc, 2*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	refused(t, w)
	w.srv.Restart()
	w.restoreAll(t)
}

// TestShutdownInFlight: Shutdown while an upload is in flight refuses new
// transfers on that session but lets the upload finish and commit, then
// ends the session. The file survives a restart.
func TestShutdownInFlight(t *testing.T) {
	w := newWorld(t, smallChunks)
	c, r, d := inFlight(t, w, "docs/inflight.bin")
	errc := shutdownAsync(w, ioTimeout)
	waitShuttingDown(t, w.srv.Srv)
	m := c.uploadReq("docs/other.bin", []byte("x"))
	c.send(m)
	c.expectError(m.Req, proto.CodeShutdown)
	c.sendData(c.chunkFrames(r.Xfer, r.UploadID, d, 4096)[1:]...)
	if res := c.finishUpload(r.Xfer, d); res.Status != proto.ResultStored {
		t.Fatalf("commit during shutdown: %+v", res)
	}
	c.expectShutdownEnd()
	if err := shutdownResult(t, errc, 2*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	w.files["docs/inflight.bin"] = d
	w.srv.Restart()
	w.restoreAll(t)
}

// TestShutdownDuringHandshake: a session still authenticating when
// Shutdown begins ends promptly, and Shutdown returns within its grace.
func TestShutdownDuringHandshake(t *testing.T) {
	w := newWorld(t, smallChunks)
	c := dialRaw(t, w.srv)
	b := proto.AppendMessage(nil, c.registerMsg(goodName, w.key))
	c.write(b[:len(b)/2])
	// Wait for the server to run the session, and give it a moment to
	// accept the control stream.
	deadline := time.Now().Add(ioTimeout)
	for quicsrv.SessionCount(w.srv.Srv) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the server never started the session")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	errc := shutdownAsync(w, 2*time.Second)
	waitShuttingDown(t, w.srv.Srv)
	c.ctrl.Write(b[len(b)/2:]) // may fail: the server may have closed already
	// Whatever the session does with the late Register, it must end.
	for {
		m, err := c.read()
		if err != nil {
			var ae *quic.ApplicationError
			if err != io.EOF && !(errors.As(err, &ae) && ae.Remote && proto.ErrorCode(ae.ErrorCode) == proto.CodeShutdown) {
				t.Fatalf("session ended with %v; want a close with %v or the end of the control stream", err, proto.CodeShutdown)
			}
			t.Logf("session ended: %v", err)
			break
		}
		if _, ok := m.(*proto.Welcome); !ok {
			t.Fatalf("unexpected %v", m.Type())
		}
	}
	c.close()
	if err := shutdownResult(t, errc, 5*time.Second); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	w.srv.Restart()
	w.restoreAll(t)
}

// TestDrainLetsCommitFinish isolates the session half of graceful
// shutdown: a draining session (as Shutdown makes it, but with the
// transport left open) must still store a committed upload and answer
// UploadResult before it ends.
func TestDrainLetsCommitFinish(t *testing.T) {
	w := newWorld(t, smallChunks)
	c, r, d := inFlight(t, w, "docs/drain.bin")
	quicsrv.DrainSessions(w.srv.Srv)
	m := c.uploadReq("docs/other.bin", []byte("x"))
	c.send(m)
	c.expectError(m.Req, proto.CodeShutdown)
	c.sendData(c.chunkFrames(r.Xfer, r.UploadID, d, 4096)[1:]...)
	if res := c.finishUpload(r.Xfer, d); res.Status != proto.ResultStored {
		t.Fatalf("commit while draining: %+v", res)
	}
	c.expectShutdownEnd()
	w.files["docs/drain.bin"] = d
	w.restoreAll(t)
}

// TestDrainRefusesNewTransfers: a draining session refuses new uploads and
// restores with CodeShutdown but still answers listings; when the client
// goes away its open upload is discarded.
func TestDrainRefusesNewTransfers(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	c, _, _ := inFlight(t, w, "docs/abandoned.bin")
	quicsrv.DrainSessions(w.srv.Srv)
	m := c.uploadReq("docs/other.bin", []byte("x"))
	c.send(m)
	c.expectError(m.Req, proto.CodeShutdown)
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: "docs/file-001.bin"})
	c.expectError(req, proto.CodeShutdown)
	if got := c.list("docs", 0); len(got) != len(w.files) {
		t.Fatalf("listing while draining: %d entries, want %d", len(got), len(w.files))
	}
	c.close()
	w.unchanged(t, before)
	w.healthy(t) // a new session is not draining
	w.restoreAll(t)
}

// TestDrainDiscardsAbandoned: a draining session whose upload the client
// aborts answers the abort, then ends, and keeps nothing of the upload.
func TestDrainDiscardsAbandoned(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	c, r, _ := inFlight(t, w, "docs/abandoned.bin")
	quicsrv.DrainSessions(w.srv.Srv)
	m := c.uploadReq("docs/other.bin", []byte("x"))
	c.send(m)
	c.expectError(m.Req, proto.CodeShutdown)
	c.send(&proto.UploadAbort{Xfer: r.Xfer})
	if res := expect[*proto.UploadResult](c); res.Status != proto.ResultDiscarded {
		t.Fatalf("abort while draining: %+v", res)
	}
	c.expectShutdownEnd()
	w.unchanged(t, before)
	w.restoreAll(t)
}

// TestShutdownGraceExpires: when the grace period ends with an upload
// still open, Shutdown closes the session with CodeShutdown, reports the
// context's error, and discards the upload.
func TestShutdownGraceExpires(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	c, _, _ := inFlight(t, w, "docs/unfinished.bin")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := w.srv.Srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v; want the deadline error", err)
	}
	c.expectClosed(proto.CodeShutdown)
	w.unchanged(t, before)
	w.srv.Restart()
	w.restoreAll(t)
}

// TestClose: Close ends every session at once with CodeShutdown; open
// uploads are discarded, stored files kept.
func TestClose(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	idle := registered(t, w.srv, goodName, w.key)
	busy, _, _ := inFlight(t, w, "docs/unfinished.bin")
	if err := w.srv.Srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	idle.expectClosed(proto.CodeShutdown)
	busy.expectClosed(proto.CodeShutdown)
	w.unchanged(t, before)
	w.srv.Restart()
	w.restoreAll(t)
}

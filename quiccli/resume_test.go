package quiccli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// resumeSize is large against what one connection has in flight, so the
// resend bound below measures resume, not the chunks lost in flight.
const resumeSize = 24 << 20

// interrupt runs cut once, when the send has read past fraction of the file.
func interrupt(fraction float64, cut func()) func(string, int, int64) {
	var once sync.Once
	return func(_ string, _ int, off int64) {
		if off >= int64(fraction*resumeSize) {
			once.Do(cut)
		}
	}
}

// TestResumeAfterLostConnection cuts the connection at 10%, 50% and 99% of
// a file and sends it again in a new session: only the missing bytes move,
// and the stored file is the original.
func TestResumeAfterLostConnection(t *testing.T) {
	for _, fraction := range []float64{0.10, 0.50, 0.99} {
		t.Run(fmt.Sprintf("%.0f%%", fraction*100), func(t *testing.T) {
			ctx := testContext(t)
			srv := startServer(t)
			c := newClient(t)
			register(t, ctx, c, srv, "alice")
			path := filepath.Join(t.TempDir(), "big.bin")
			data := writeRandom(t, path, resumeSize, 42)

			s1 := connect(t, ctx, c)
			hook := interrupt(fraction, func() {
				s1.conn.CloseWithError(quic.ApplicationErrorCode(0), "test: the network went away")
			})
			res1 := s1.Send(ctx, SendOptions{Paths: []string{path}, testHookChunkRead: hook}, nopReporter{})
			if res1.Failed != 1 {
				t.Fatalf("interrupted send: failed %d, want 1", res1.Failed)
			}

			s2 := connect(t, ctx, c)
			var st FileStatus
			fp := &recordingFile{}
			var bytes2 atomicInt
			st, err := s2.sendFile(ctx, sendItem{path: path, name: "big.bin"}, SendOptions{}, fp, &bytes2.v)
			if err != nil {
				t.Fatalf("resumed send: %v", err)
			}
			if st.Resumed == 0 {
				t.Errorf("the second send did not resume (Resumed = 0)")
			}
			total := res1.Bytes + bytes2.v.Load()
			t.Logf("cut at %.0f%%: first send %d bytes, resumed %d, second send %d; total %.3f× the file",
				fraction*100, res1.Bytes, st.Resumed, bytes2.v.Load(), float64(total)/resumeSize)
			assertResendBound(t, total, resumeSize)
			assertRestores(t, ctx, s2, "big.bin", data)
			assertNoTempFiles(t, srv)
		})
	}
}

// TestResumeAfterServerRestart restarts the server in the middle of an
// upload; the next send resumes from what it kept.
func TestResumeAfterServerRestart(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "big.bin")
	data := writeRandom(t, path, resumeSize, 7)
	s1 := connect(t, ctx, c)
	hook := interrupt(0.5, func() { srv.Restart() })
	res1 := s1.Send(ctx, SendOptions{Paths: []string{path}, testHookChunkRead: hook}, nopReporter{})
	if res1.Failed != 1 {
		t.Fatalf("send across a restart: failed %d, want 1", res1.Failed)
	}
	s2 := connect(t, ctx, c)
	res2 := s2.Send(ctx, SendOptions{Paths: []string{path}}, nopReporter{})
	if res2.Sent != 1 {
		t.Fatalf("send after the restart: sent %d (%v)", res2.Sent, res2.FirstErr)
	}
	total := res1.Bytes + res2.Bytes
	t.Logf("first send %d bytes, second %d; total %.3f× the file", res1.Bytes, res2.Bytes, float64(total)/resumeSize)
	assertResendBound(t, total, resumeSize)
	assertRestores(t, ctx, s2, "big.bin", data)
}

// TestChangedFileIsNotStitched changes the file between the interrupted
// send and the next: it is sent afresh and stored as it is now.
func TestChangedFileIsNotStitched(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "big.bin")
	writeRandom(t, path, resumeSize, 1)
	s1 := connect(t, ctx, c)
	hook := interrupt(0.5, func() { s1.conn.CloseWithError(0, "test: the network went away") })
	s1.Send(ctx, SendOptions{Paths: []string{path}, testHookChunkRead: hook}, nopReporter{})

	// Same size, new content and modification time.
	now := writeRandom(t, path, resumeSize, 2)
	later := time.Now().Add(time.Minute)
	os.Chtimes(path, later, later)
	s2 := connect(t, ctx, c)
	var n atomicInt
	st, err := s2.sendFile(ctx, sendItem{path: path, name: "big.bin"}, SendOptions{}, &recordingFile{}, &n.v)
	if err != nil {
		t.Fatal(err)
	}
	if st.Resumed != 0 || n.v.Load() != resumeSize {
		t.Errorf("changed file: resumed %d, sent %d bytes; want 0 and the whole %d", st.Resumed, n.v.Load(), resumeSize)
	}
	assertRestores(t, ctx, s2, "big.bin", now)
	assertNoTempFiles(t, srv)
}

type atomicInt struct{ v atomic.Int64 }

// TestInterruptedSendResumes stops a send the way Ctrl-C does (its context
// ends) half-way: the server keeps what arrived, and the next send resumes.
func TestInterruptedSendResumes(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "big.bin")
	data := writeRandom(t, path, resumeSize, 21)
	sendCtx, interrupt := context.WithCancel(ctx)
	hook := func(_ string, _ int, off int64) {
		if off >= resumeSize/2 {
			interrupt()
		}
	}
	start := time.Now()
	res1, err := c.SendResilient(sendCtx, "", "", SendOptions{Paths: []string{path}, testHookChunkRead: hook}, ReconnectOptions{Attempts: 3}, nopReporter{})
	if err != nil {
		t.Fatal(err)
	}
	if res1.Failed != 1 {
		t.Fatalf("interrupted send: failed %d, want 1", res1.Failed)
	}
	t.Logf("interrupted send returned after %v", time.Since(start))
	res2, err := c.SendResilient(ctx, "", "", SendOptions{Paths: []string{path}}, ReconnectOptions{}, nopReporter{})
	if err != nil || res2.Sent != 1 {
		t.Fatalf("send after the interruption: sent %d, err %v (%v)", res2.Sent, err, res2.FirstErr)
	}
	total := res1.Bytes + res2.Bytes
	t.Logf("first send %d bytes, second %d; total %.3f× the file", res1.Bytes, res2.Bytes, float64(total)/resumeSize)
	assertResendBound(t, total, resumeSize)
	s := connect(t, ctx, c)
	assertRestores(t, ctx, s, "big.bin", data)
}

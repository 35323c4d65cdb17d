package quiccli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// TestSendCarriesOnAcrossServerRestart: one send, the server restarts
// half-way; the client reconnects on its own and resumes.
func TestSendCarriesOnAcrossServerRestart(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "big.bin")
	data := writeRandom(t, path, resumeSize, 3)
	var once sync.Once
	hook := func(_ string, _ int, off int64) {
		if off >= resumeSize/2 {
			once.Do(srv.Restart)
		}
	}
	res, err := c.SendResilient(ctx, "", "", SendOptions{Paths: []string{path}, testHookChunkRead: hook},
		ReconnectOptions{Attempts: 3, MaxWait: time.Second}, nopReporter{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 1 || res.Failed != 0 {
		t.Fatalf("sent %d, failed %d (%v); want 1, 0", res.Sent, res.Failed, res.FirstErr)
	}
	assertResendBound(t, res.Bytes, resumeSize)
	s := connect(t, ctx, c)
	assertRestores(t, ctx, s, "big.bin", data)
}

// TestSendCarriesOnAfterOutage: the link goes dark for longer than the
// client's idle timeout; the client gives the connection up, reconnects
// when the link is back, and takes its upload over from the server's
// still-open old session.
func TestSendCarriesOnAfterOutage(t *testing.T) {
	x := startProxied(t, 11)
	ctx, c, p := x.ctx, x.c, x.proxy
	c.dialHook = func(o *dialOptions) {
		o.Server = p.Addr()
		o.QUICConfig = func(q *quic.Config) {
			q.MaxIdleTimeout = 1500 * time.Millisecond
			q.KeepAlivePeriod = 300 * time.Millisecond
		}
	}
	path := filepath.Join(t.TempDir(), "big.bin")
	data := writeRandom(t, path, resumeSize, 5)
	var once sync.Once
	hook := func(_ string, _ int, off int64) {
		if off >= resumeSize*3/10 {
			once.Do(func() {
				p.SetDrop(toServer, 1)
				p.SetDrop(toClient, 1)
				time.AfterFunc(3*time.Second, func() {
					p.SetDrop(toServer, 0)
					p.SetDrop(toClient, 0)
				})
			})
		}
	}
	res, err := c.SendResilient(ctx, "", "", SendOptions{Paths: []string{path}, testHookChunkRead: hook},
		ReconnectOptions{Attempts: 6, MaxWait: 2 * time.Second}, nopReporter{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 1 || res.Failed != 0 {
		t.Fatalf("sent %d, failed %d (%v); want 1, 0", res.Sent, res.Failed, res.FirstErr)
	}
	assertResendBound(t, res.Bytes, resumeSize)
	s := connect(t, ctx, c)
	assertRestores(t, ctx, s, "big.bin", data)
}

// TestSendGivesUpOnPermanentErrors: a changed server certificate is not
// retried.
func TestSendGivesUpOnPermanentErrors(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "f")
	writeRandom(t, path, 1000, 1)
	os.RemoveAll(filepath.Join(srv.Dir, "tls"))
	srv.Restart()
	start := time.Now()
	_, err := c.SendResilient(ctx, "", "", SendOptions{Paths: []string{path}}, ReconnectOptions{Attempts: 5}, nopReporter{})
	if err == nil || !permanent(err) {
		t.Fatalf("send to a server with a new certificate: err = %v, want a permanent error", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("gave up after %v; a changed certificate must not be retried", took)
	}
}

// TestConnectionError: what ends the whole connection, against what ends
// one stream or one request.
func TestConnectionError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&quic.IdleTimeoutError{}, true},
		{fmt.Errorf("reading: %w", &quic.IdleTimeoutError{}), true},
		{&quic.ApplicationError{ErrorCode: 0xc, Remote: true}, true},
		{&quic.TransportError{ErrorCode: quic.TransportErrorCode(0xa)}, true},
		{&quic.StatelessResetError{}, true},
		{&quic.StreamError{StreamID: 2, ErrorCode: 1}, false},
		{&proto.Error{Code: proto.CodeNoSpace, Message: "over quota"}, false},
		{io.ErrUnexpectedEOF, false},
		{nil, false},
	} {
		if got := connectionError(tc.err); got != tc.want {
			t.Errorf("connectionError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

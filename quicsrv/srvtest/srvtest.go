// Package srvtest starts a real qbackup server for tests, like
// net/http/httptest: UDP on 127.0.0.1:0, SQLite and files in a temporary
// directory, logs routed to t.Log.
package srvtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/store"
)

// Server is a running qbackupd on loopback.
type Server struct {
	Addr        string // host:port to dial
	Fingerprint string // the certificate's SHA-256, hex
	Dir         string // data directory
	Store       *store.Store
	Srv         *quicsrv.Server

	t         testing.TB
	configure func(*quicsrv.Server)
	listen    func(addr string) (net.PacketConn, error)
	done      chan error
}

// Start starts a server whose data lives in a new t.TempDir(). configure,
// if not nil, adjusts the server before it serves. The server stops at the
// end of the test.
func Start(t testing.TB, configure func(*quicsrv.Server)) *Server {
	t.Helper()
	return StartIn(t, t.TempDir(), configure)
}

// StartIn is Start with the data in dir, which the store creates if it is
// missing: for tests that need the data on a particular file system, or
// created by the server itself.
func StartIn(t testing.TB, dir string, configure func(*quicsrv.Server)) *Server {
	t.Helper()
	s := &Server{t: t, Dir: dir, configure: configure}
	s.start("127.0.0.1:0")
	t.Cleanup(s.Close)
	return s
}

// StartOn is Start serving on pc instead of a UDP socket on loopback: for
// tests on a simulated network. Restart does not work on such a server.
func StartOn(t testing.TB, pc net.PacketConn, configure func(*quicsrv.Server)) *Server {
	t.Helper()
	s := &Server{t: t, Dir: t.TempDir(), configure: configure}
	s.listen = func(string) (net.PacketConn, error) {
		if pc == nil {
			return nil, errors.New("srvtest: a server on a given connection cannot restart")
		}
		c := pc
		pc = nil
		return c, nil
	}
	s.start(pc.LocalAddr().String())
	t.Cleanup(s.Close)
	return s
}

func (s *Server) start(addr string) {
	t := s.t
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, s.Dir)
	if err != nil {
		t.Fatalf("srvtest: open store: %v", err)
	}
	cert, err := certs.LoadOrCreate(filepath.Join(s.Dir, "tls"))
	if err != nil {
		t.Fatalf("srvtest: certificate: %v", err)
	}
	listen := s.listen
	if listen == nil {
		listen = func(addr string) (net.PacketConn, error) { return net.ListenPacket("udp", addr) }
	}
	pc, err := listen(addr)
	if err != nil {
		t.Fatalf("srvtest: listen: %v", err)
	}
	s.Store = st
	s.Fingerprint = certs.Fingerprint(cert.Certificate[0])
	s.Addr = pc.LocalAddr().String()
	s.Srv = &quicsrv.Server{
		Store:     st,
		TLSConfig: certs.ServerConfig(cert),
		Logger:    slog.New(slog.NewTextHandler(&tlogWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if s.configure != nil {
		s.configure(s.Srv)
	}
	s.done = make(chan error, 1)
	srv := s.Srv
	go func() { s.done <- srv.Serve(pc) }()
}

// Close stops the server and closes its store. It is safe to call twice.
func (s *Server) Close() {
	if s.Srv == nil {
		return
	}
	s.Srv.Close()
	<-s.done
	s.Store.Close()
	s.Srv = nil
}

// Restart stops the server and starts it again on the same address with
// the same data, as after a crash or an upgrade.
func (s *Server) Restart() {
	s.t.Helper()
	addr := s.Addr
	s.Close()
	s.start(addr)
}

// tlogWriter sends log lines to t.Log until the test ends.
type tlogWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		defer func() {
			if recover() != nil { // logging after the test ended
				w.done = true
			}
		}()
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

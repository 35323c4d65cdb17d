// Package quicsrv is the qbackup server: it accepts QUIC connections, runs
// the session protocol of package proto on each, and keeps what clients
// send in a store.Store. Run is what qbackupd calls; Server is the piece
// tests start on UDP loopback.
package quicsrv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/store"
	"github.com/quic-go/quic-go"
)

// Defaults for the zero values of Server's fields.
const (
	DefaultChunkSize        = 1 << 20
	DefaultStreams          = 8
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 60 * time.Second
	DefaultKeepAlive        = 10 * time.Second
	DefaultMaxTransfers     = 256
	DefaultMaxConns         = 1024
	DefaultMaxConnsClient   = 40
	DefaultMemoryBudget     = 512 << 20
	DefaultTransferTimeout  = 5 * time.Minute
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("quicsrv: server closed")

// Server serves qbackup sessions. Set the fields before calling Serve; the
// zero value of each optional field means its default.
type Server struct {
	// Store keeps clients and their files. Required.
	Store *store.Store
	// TLSConfig holds the server certificate. Required. Its NextProtos is
	// replaced with proto.ALPN.
	TLSConfig *tls.Config
	// Logger receives the server's log; nil logs nothing.
	Logger *slog.Logger

	// ChunkSize is the largest chunk plaintext accepted and sent.
	ChunkSize int
	// Streams is how many data streams a client may open at once, and how
	// many the server uses for a restore.
	Streams int
	// MaxTransfers bounds the uploads and restores open at once in one
	// session.
	MaxTransfers int
	// HandshakeTimeout bounds the QUIC handshake and the authentication
	// that follows it.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that has heard nothing for this long.
	IdleTimeout time.Duration

	// Per-client limits, checked when an upload is requested: a request
	// over one is answered with an Error (CodeTooLarge for MaxFileSize,
	// CodeLimit for the quotas) before anything is created. A request for
	// a file the server already holds unchanged is never refused. A
	// client has at most one unfinished upload per file, which a new
	// request for the file replaces or resumes, and a client's requests
	// for one file are checked one at a time; uploads of different files
	// requested at the same time are checked against the same usage, so
	// together they may overshoot a quota by what they add.

	// MaxFileSize is the largest file accepted, in bytes. 0 (the default)
	// means no limit but the protocol's, proto.MaxFileSize (1 PiB).
	MaxFileSize int64
	// QuotaBytes bounds what one client stores, in bytes: the sizes of all
	// its file versions, plus the declared sizes of its unfinished uploads
	// of other files (running or kept for resume) and of any of the
	// requested file whose commit is under way, plus the requested file.
	// 0 (the default) means unlimited.
	QuotaBytes int64
	// QuotaFiles bounds how many file versions one client stores. 0 (the
	// default) means unlimited.
	QuotaFiles int

	// Registration says who may register a new client: anyone
	// (store.AdmitAll, the zero value), holders of an invite token
	// (store.AdmitInvited; see store.InviteBook), or nobody
	// (store.AdmitNone). A registered client may always register again
	// with its key, which is how it learns its ID.
	Registration store.Admission

	// MaxConns bounds the connections open at once, authenticated or
	// not; one more is closed with CodeLimit at once. Default
	// DefaultMaxConns.
	MaxConns int
	// MaxConnsPerClient bounds the authenticated connections of one
	// client; one more is closed with CodeLimit after the handshake.
	// Default DefaultMaxConnsClient.
	MaxConnsPerClient int
	// MemoryBudget bounds, across all connections, the bytes clients can
	// make the server hold: QUIC connection receive windows and the
	// buffers of chunks being read. A connection that does not fit is
	// refused with CodeLimit; past it, windows stop growing and chunk
	// readers wait, which slows senders rather than failing them.
	// Default DefaultMemoryBudget.
	MemoryBudget int64
	// TransferTimeout ends an upload that has received nothing for this
	// long (it is kept for resume and the client is told, CodeAborted),
	// and a connection whose data stream stops in the middle of a chunk
	// for this long (CodeAborted). Keep-alives keep an idle connection
	// open, so without it a stalled client would hold its upload, and
	// its share of the memory budget, forever. Default
	// DefaultTransferTimeout.
	TransferTimeout time.Duration

	// ScrubEvery, if positive, has the server re-read each stored
	// version about once per this period, in the background, and mark
	// the versions whose files no longer match their checksums as
	// damaged (see scrub). 0, the default, turns the scrub off.
	ScrubEvery time.Duration
	// ScrubRate bounds how fast the scrub reads, in bytes per second.
	// Default DefaultScrubRate.
	ScrubRate int64

	// Background work (the scrub, rechecks) runs under bgCtx, which ends
	// when Shutdown or Close begins; they wait for bg.
	bgCtx       context.Context
	bgCancel    context.CancelFunc
	bg          sync.WaitGroup
	recheckOnce sync.Once
	recheck     *rechecker
	scrubRead   atomic.Int64 // bytes the scrub read, for tests

	// active maps the uploads sessions are receiving to those sessions,
	// so no two sessions write one upload; byFile indexes them by client
	// and name, for takeOver. turns queues, for each file, the upload
	// requests being handled, the first holding the turn (fileTurn).
	activeMu sync.Mutex
	active   map[[16]byte]*upload
	byFile   map[fileRef][]*upload
	turns    map[fileRef][]*fileTurn

	budgetOnce sync.Once
	mem        *budget
	windows    sync.Map // *quic.Conn -> *int64: receive window bytes charged to mem

	mu        sync.Mutex
	tr        *quic.Transport
	pc        net.PacketConn
	listener  *quic.Listener
	sessions  map[*session]struct{}
	perClient map[store.ClientID]int // authenticated sessions of each client
	closed    bool
	wg        sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
}

func (s *Server) chunkSize() int {
	if s.ChunkSize > 0 && s.ChunkSize <= proto.MaxChunkSize {
		return s.ChunkSize
	}
	return DefaultChunkSize
}

func (s *Server) streams() int {
	if s.Streams > 0 && s.Streams <= proto.MaxStreams {
		return s.Streams
	}
	return DefaultStreams
}

func (s *Server) maxTransfers() int {
	if s.MaxTransfers > 0 {
		return s.MaxTransfers
	}
	return DefaultMaxTransfers
}

func (s *Server) maxFileSize() uint64 {
	if s.MaxFileSize > 0 && s.MaxFileSize < proto.MaxFileSize {
		return uint64(s.MaxFileSize)
	}
	return proto.MaxFileSize
}

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return DefaultMaxConns
}

func (s *Server) maxConnsPerClient() int {
	if s.MaxConnsPerClient > 0 {
		return s.MaxConnsPerClient
	}
	return DefaultMaxConnsClient
}

func (s *Server) transferTimeout() time.Duration {
	if s.TransferTimeout > 0 {
		return s.TransferTimeout
	}
	return DefaultTransferTimeout
}

// budget returns the memory budget shared by all connections.
func (s *Server) budget() *budget {
	s.budgetOnce.Do(func() {
		size := s.MemoryBudget
		if size <= 0 {
			size = DefaultMemoryBudget
		}
		s.mem = newBudget(size)
	})
	return s.mem
}

// chargeWindow charges a connection receive window increase to the budget;
// false refuses it (quic-go then keeps the smaller window).
func (s *Server) chargeWindow(conn *quic.Conn, delta uint64) bool {
	if delta > math.MaxInt64 || !s.budget().tryAcquire(int64(delta)) {
		return false
	}
	v, _ := s.windows.LoadOrStore(conn, new(int64))
	atomic.AddInt64(v.(*int64), int64(delta))
	return true
}

// releaseWindow gives back what a closed connection's window held.
func (s *Server) releaseWindow(conn *quic.Conn) {
	if v, ok := s.windows.LoadAndDelete(conn); ok {
		s.budget().release(atomic.LoadInt64(v.(*int64)))
	}
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// claim marks u as being received by its owner; false if a session has
// an upload with its ID.
func (s *Server) claim(u *upload) bool {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	if _, ok := s.active[u.id]; ok {
		return false
	}
	if s.active == nil {
		s.active = make(map[[16]byte]*upload)
		s.byFile = make(map[fileRef][]*upload)
	}
	s.active[u.id] = u
	ref := u.ref()
	s.byFile[ref] = append(s.byFile[ref], u)
	return true
}

func (s *Server) unclaim(id [16]byte) {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	u, ok := s.active[id]
	if !ok {
		return
	}
	delete(s.active, id)
	ref := u.ref()
	list := slices.DeleteFunc(s.byFile[ref], func(x *upload) bool { return x == u })
	if len(list) == 0 {
		delete(s.byFile, ref)
	} else {
		s.byFile[ref] = list
	}
}

// fileRef names a client's file.
type fileRef struct {
	client store.ClientID
	name   string
}

// ref is the file u is an upload of.
func (u *upload) ref() fileRef { return fileRef{u.owner.client.ID, u.name} }

func (s *Server) claimed(id [16]byte) bool {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	_, ok := s.active[id]
	return ok
}

// takeOver gives up the uploads of name that sessions of ss's client, ss
// included, are receiving, for ss to resume what they received (or
// discard it, if stale): a client has at most one unfinished upload of a
// file, and its newest request for the file wins. A client whose
// connection died reconnects long before the server notices the old
// connection is gone (its idle timeout); without this its new session
// could not resume. An upload whose final step (a commit, an abort) is
// under way is let finish, and takeOver reports that it found one.
func (s *Server) takeOver(ss *session, name string) (letFinish bool) {
	victims := s.uploadsOf(ss.client.ID, name)
	for _, u := range victims {
		if !u.owner.surrender(u.id, ss) {
			letFinish = true
		}
	}
	s.awaitRelease(ss, victims)
	return letFinish
}

// uploadsOf returns the uploads of the client's file name that sessions
// are receiving.
func (s *Server) uploadsOf(c store.ClientID, name string) []*upload {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	return slices.Clone(s.byFile[fileRef{c, name}])
}

// awaitRelease waits until no session holds the uploads us, at most 10 s
// and while ss lasts. A session that is ending parks its uploads itself,
// and a commit waits for a group commit: wait for those (an fsync and a
// row) rather than start afresh.
func (s *Server) awaitRelease(ss *session, us []*upload) {
	deadline := time.Now().Add(10 * time.Second)
	for _, u := range us {
		for s.holds(u) && time.Now().Before(deadline) && ss.ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// holds reports whether a session still receives u.
func (s *Server) holds(u *upload) bool {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	return s.active[u.id] == u
}

// QUICConfig is the QUIC configuration the server listens with.
func (s *Server) QUICConfig() *quic.Config {
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	return &quic.Config{
		Versions:              []quic.Version{quic.Version1},
		HandshakeIdleTimeout:  s.handshakeTimeout(),
		MaxIdleTimeout:        idle,
		KeepAlivePeriod:       DefaultKeepAlive,
		MaxIncomingStreams:    1, // the control stream; nothing else is bidirectional
		MaxIncomingUniStreams: int64(s.streams()),
		// Windows big enough for a few chunks per stream in flight.
		InitialStreamReceiveWindow:     uint64(s.chunkSize()) * 2,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: uint64(s.chunkSize()) * 4,
		// Bounds what one connection can make the server buffer; ample for
		// the bandwidth-delay product of a 100 Mbit/s link at 300 ms.
		MaxConnectionReceiveWindow: 32 << 20,
		// Every increase is charged to the memory budget, which bounds
		// what all connections together can make the server buffer.
		AllowConnectionWindowIncrease: s.chargeWindow,
	}
}

// Serve accepts connections on pc until Shutdown or Close, and returns
// ErrServerClosed then. It takes ownership of pc.
func (s *Server) Serve(pc net.PacketConn) error {
	if s.Store == nil || s.TLSConfig == nil {
		return errors.New("quicsrv: Server needs a Store and a TLSConfig")
	}
	tlsConf := s.TLSConfig.Clone()
	tlsConf.NextProtos = []string{proto.ALPN}
	tlsConf.MinVersion = tls.VersionTLS13
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(tlsConf, s.QUICConfig())
	if err != nil {
		tr.Close()
		pc.Close()
		return fmt.Errorf("quicsrv: listen: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		tr.Close()
		pc.Close()
		return ErrServerClosed
	}
	s.tr, s.pc = tr, pc
	s.listener = ln
	s.sessions = make(map[*session]struct{})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	if s.ScrubEvery > 0 {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			s.scrub(s.bgCtx)
		}()
	}
	s.mu.Unlock()

	log := s.logger()
	for {
		conn, err := ln.Accept(s.ctx)
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				// Shutdown or Close owns the transport from here: closing
				// it now would cut the sessions they let finish.
				return ErrServerClosed
			}
			s.closeSessions()
			s.wg.Wait()
			s.stopBackground()
			s.closeTransport()
			return fmt.Errorf("quicsrv: accept: %w", err)
		}
		sess := newSession(s, conn, log.With("remote", conn.RemoteAddr().String()))
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeShutdown), "server shutting down")
			continue
		}
		if n := len(s.sessions); n >= s.maxConns() {
			s.mu.Unlock()
			log.Warn("refusing a connection: too many open", "remote", conn.RemoteAddr().String(), "limit", s.maxConns())
			conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeLimit), fmt.Sprintf("server busy: %d connections open; try again later", n))
			continue
		}
		// The initial receive window is granted without asking: charge it
		// now, and refuse the connection if it does not fit.
		if !s.chargeWindow(conn, s.QUICConfig().InitialConnectionReceiveWindow) {
			s.mu.Unlock()
			log.Warn("refusing a connection: memory budget used up", "remote", conn.RemoteAddr().String(), "in_use", s.budget().inUse())
			conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeLimit), "server busy: memory budget used up; try again later")
			continue
		}
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess.run()
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
			s.releaseWindow(conn)
		}()
	}
}

// admitClient counts an authenticated session of client c, or refuses it
// over the per-client limit.
func (s *Server) admitClient(c store.ClientID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perClient == nil {
		s.perClient = make(map[store.ClientID]int)
	}
	if n := s.perClient[c]; n >= s.maxConnsPerClient() {
		return proto.Errorf(proto.CodeLimit, "this client has %d connections open, the server's limit; close some or try again later", n)
	}
	s.perClient[c]++
	return nil
}

func (s *Server) leaveClient(c store.ClientID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perClient[c]--; s.perClient[c] <= 0 {
		delete(s.perClient, c)
	}
}

// Addr returns the address Serve listens on, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return nil
	}
	return s.listener.Addr()
}

// Shutdown stops accepting connections, lets sessions finish what they are
// doing until ctx ends, then closes the rest. Uploads not yet committed
// are kept, as far as they got, for the clients to resume; committed files
// are safe.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	if s.listener != nil {
		s.listener.Close()
	}
	for sess := range s.sessions {
		sess.drain()
	}
	s.mu.Unlock()
	s.stopBackground()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		s.closeSessions()
		<-done
		err = ctx.Err()
	}
	s.closeTransport()
	return err
}

func (s *Server) closeTransport() {
	s.mu.Lock()
	tr, pc := s.tr, s.pc
	s.tr, s.pc = nil, nil
	s.mu.Unlock()
	if tr != nil {
		tr.Close()
		pc.Close()
	}
}

// Close closes every connection at once and waits for the sessions and
// the background work to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.listener != nil {
		s.listener.Close()
	}
	s.mu.Unlock()
	s.closeSessions()
	s.stopBackground()
	s.wg.Wait()
	s.closeTransport()
	return nil
}

// goBackground runs fn in a goroutine of the server's background work,
// with a context that ends when Shutdown or Close begins. It reports
// false, and does nothing, once the server is shutting down or before
// Serve.
func (s *Server) goBackground(fn func(ctx context.Context)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.bgCtx == nil {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		fn(s.bgCtx)
	}()
	return true
}

// stopBackground ends the background work and waits for it. None starts
// after: the caller has set s.closed, or no session is left to start any.
func (s *Server) stopBackground() {
	s.mu.Lock()
	cancel := s.bgCancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.bg.Wait()
}

func (s *Server) closeSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	for sess := range s.sessions {
		sess.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeShutdown), "server shutting down")
	}
}

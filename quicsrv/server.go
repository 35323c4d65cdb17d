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
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/store"
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
	DefaultMaxHandshakes    = 256
	DefaultMaxHandshakesIP  = 32
	DefaultIdleSession      = 5 * time.Minute
)

// Initial receive windows of every connection. They are small, so that a
// connection, authenticated or not, can make the server hold little
// before it shows it needs more; they grow (doubling, as quic-go tunes
// them) with data actually read, and each increase is charged to the
// client's share of the memory budget. What the initial windows of
// MaxConns connections hold is set aside from the budget at start, so no
// connection ever waits for, or is refused, the memory it starts with.
const (
	initialStreamWindow = 128 << 10
	initialConnWindow   = 256 << 10
	// minTransferMemory is the least the budget must leave for window
	// growth and chunks once the initial windows are set aside.
	minTransferMemory = 8 << 20
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
	// Congestion is the congestion controller of the connections, which
	// carry restores to clients: quic.BBR (the default, "") or quic.Reno.
	// Under BBR a client may cap the rate its restores come at (Pace).
	Congestion quic.Congestion
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
	// make the server hold: QUIC connection receive windows, the buffers
	// of chunks being received and of chunks being sent for restores.
	// The initial windows of MaxConns connections (256 KiB each) are set
	// aside from it at start (Serve fails if that leaves less than 8 MiB);
	// the rest is shared, each client taking at most ClientMemory of it.
	// Past it, windows stop growing, chunk readers and restores wait,
	// which slows senders rather than failing them. Default
	// DefaultMemoryBudget.
	MemoryBudget int64
	// ClientMemory bounds what one client's sessions together take of
	// MemoryBudget beyond their initial windows, so that a few greedy or
	// idle clients cannot hold all of it; its chunk-buffer half is never
	// less than a buffer for each stream of a session (bufferFloor).
	// Default: a quarter of what the initial windows leave.
	ClientMemory int64
	// MaxHandshakes bounds the connections that have not authenticated
	// yet, in total, and MaxHandshakesPerAddr those from one IP address.
	// When one more arrives, the oldest of them (of that address, for the
	// second) is closed with CodeLimit to make room: strangers can only
	// push out strangers, never authenticated sessions. Over half of
	// MaxHandshakes, new connections must prove their address first
	// (QUIC Retry), so spoofed packets cannot fill them. Defaults
	// DefaultMaxHandshakes (at most MaxConns) and DefaultMaxHandshakesIP.
	MaxHandshakes        int
	MaxHandshakesPerAddr int
	// IdleSession closes an authenticated session with no request or
	// transfer of its own when its client has had none in any session for
	// this long (code 0, reason "idle"): keep-alives would otherwise keep
	// an idle session, and what it holds, open forever. The parallel
	// connections of one busy client are not idle. Default
	// DefaultIdleSession; negative: never.
	IdleSession time.Duration
	// TransferTimeout ends an upload that has received nothing for this
	// long (it is kept for resume and the client is told, CodeAborted),
	// and a connection whose data stream stops in the middle of a chunk
	// for this long (CodeAborted). Keep-alives keep an idle connection
	// open, so without it a stalled client would hold its upload, and
	// its share of the memory budget, forever. Default
	// DefaultTransferTimeout.
	TransferTimeout time.Duration
	// MaxOpenFiles bounds the files transfers hold open, all clients
	// together: every upload its temp file, every restore the stored file
	// it reads (a file being opened counts twice, see files.go). A request
	// beyond it is refused with CodeLimit before anything is opened.
	// Default: the process's open-file limit (RLIMIT_NOFILE) less what
	// the rest of the process may hold, see defaultOpenFiles.
	MaxOpenFiles int
	// MaxOpenFilesPerClient bounds the files one client's transfers hold
	// open, over all its connections; a request beyond it is refused with
	// CodeLimit. Default: a quarter of MaxOpenFiles, so that one or two
	// clients cannot take every file (MaxConnsPerClient × MaxTransfers
	// alone would let one client open 10,240).
	MaxOpenFilesPerClient int

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
	retries     atomic.Int64 // Retries asked of new connections, for tests
	pathMoves   atomic.Int64 // controllers put back after a client moved, for tests

	// active maps the uploads sessions are receiving to those sessions,
	// so no two sessions write one upload; byFile indexes them by client
	// and name, for takeOver. turns queues, for each file, the upload
	// requests being handled, the first holding the turn (fileTurn).
	activeMu sync.Mutex
	active   map[[16]byte]*upload
	byFile   map[fileRef][]*upload
	turns    map[fileRef][]*fileTurn

	budgetOnce sync.Once
	memWindows *budget                         // window growth, half of transferMemory
	memBuffers *budget                         // chunk buffers, the other half
	windows    sync.Map                        // *quic.Conn -> *windowCharge: its growth, charged to its client's account
	accounts   map[store.ClientID]*clientState // guarded by mu
	filesOnce  sync.Once
	openFiles  *fileBudget

	mu        sync.Mutex
	tr        *quic.Transport
	pc        net.PacketConn
	listener  *quic.Listener
	sessions  map[*session]struct{}
	perClient map[store.ClientID]int // authenticated sessions of each client
	// handshaking holds the sessions not yet authenticated, oldest first,
	// and perAddr counts them by IP address (see MaxHandshakes).
	handshaking []*session
	perAddr     map[string]int
	refusals    refusalLog
	closed      bool
	wg          sync.WaitGroup
	ctx         context.Context
	cancel      context.CancelFunc
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

// budgets returns the memory budget shared by all connections, what
// MemoryBudget leaves once the initial windows of MaxConns connections
// are set aside (transferMemory), in two halves: one for receive window
// growth, one for chunk buffers. Windows never shrink, so were they to
// share one budget with the buffers they would, growing a little each
// time a chunk gives its buffer back, end up holding all of it, and the
// chunks none.
func (s *Server) budgets() (windows, buffers *budget) {
	s.budgetOnce.Do(func() {
		s.memWindows = newBudget(s.transferMemory() / 2)
		s.memBuffers = newBudget(s.transferMemory() - s.transferMemory()/2)
	})
	return s.memWindows, s.memBuffers
}

// memoryInUse is what the budget has lent, both halves.
func (s *Server) memoryInUse() int64 {
	w, b := s.budgets()
	return w.inUse() + b.inUse()
}

func (s *Server) memoryBudget() int64 {
	if s.MemoryBudget > 0 {
		return s.MemoryBudget
	}
	return DefaultMemoryBudget
}

// transferMemory is what MemoryBudget leaves for window growth and chunk
// buffers once every connection's initial window is set aside.
func (s *Server) transferMemory() int64 {
	return s.memoryBudget() - int64(s.maxConns())*initialConnWindow
}

// clientMemory is one client's share of transferMemory, in two halves
// like the budget (see budgets).
func (s *Server) clientMemory() int64 {
	if s.ClientMemory > 0 {
		return min(s.ClientMemory, s.transferMemory())
	}
	return max(s.transferMemory()/4, 1)
}

func (s *Server) maxHandshakes() int {
	n := DefaultMaxHandshakes
	if s.MaxHandshakes > 0 {
		n = s.MaxHandshakes
	}
	return min(n, s.maxConns())
}

func (s *Server) maxHandshakesPerAddr() int {
	if s.MaxHandshakesPerAddr > 0 {
		return s.MaxHandshakesPerAddr
	}
	return DefaultMaxHandshakesIP
}

// bufferFloor is the least a client's share of chunk buffers holds, more
// than ClientMemory if need be: a buffer for each stream of a session at
// once. With less, a session's stream could wait for a buffer another of
// its streams holds while that one's bytes wait behind the first's in the
// connection's window: neither would move until the chunk stall ended
// the connection.
func (s *Server) bufferFloor() int64 {
	return int64(s.streams()) * int64(s.chunkSize()+proto.TagSize)
}

// chunkStall is how long a chunk being received may go without a byte
// before its stream, and its connection, are ended: the transfer
// timeout, at most 30 s, since the chunk holds a buffer of the budget.
func (s *Server) chunkStall() time.Duration { return min(s.transferTimeout(), 30*time.Second) }

func (s *Server) idleSession() time.Duration {
	if s.IdleSession != 0 {
		return s.IdleSession
	}
	return DefaultIdleSession
}

// clientState is what the server keeps of a client while it has
// sessions or holds memory: its share of the budget, for window growth
// and for chunk buffers, and when any of its sessions last did something
// (for IdleSession).
type clientState struct {
	windows, buffers *account
	lastBusy         atomic.Int64 // unix nanoseconds
}

// clientStateLocked returns c's state, made on first need; s.mu is held.
func (s *Server) clientStateLocked(c store.ClientID) *clientState {
	if s.accounts == nil {
		s.accounts = make(map[store.ClientID]*clientState)
	}
	st := s.accounts[c]
	if st == nil {
		windows, buffers := s.budgets()
		half := s.clientMemory() / 2
		st = &clientState{
			windows: &account{share: newBudget(max(half, 1)), all: windows},
			buffers: &account{share: newBudget(max(s.clientMemory()-half, s.bufferFloor())), all: buffers},
		}
		st.lastBusy.Store(time.Now().UnixNano())
		s.accounts[c] = st
	}
	return st
}

// windowCharge is what a connection's window growth holds of its
// client's account.
type windowCharge struct {
	acct *account
	n    atomic.Int64
}

// chargeWindow charges a connection receive window increase to its
// client's account; false refuses it (quic-go then keeps the smaller
// window). A connection that has not authenticated gets no increase: it
// keeps its initial window, set aside at start.
func (s *Server) chargeWindow(conn *quic.Conn, delta uint64) bool {
	v, ok := s.windows.Load(conn)
	if !ok || delta > math.MaxInt64 {
		return false
	}
	wc := v.(*windowCharge)
	if !wc.acct.tryAcquire(int64(delta)) {
		return false
	}
	wc.n.Add(int64(delta))
	return true
}

// releaseWindow gives back what a closed connection's window growth held.
func (s *Server) releaseWindow(conn *quic.Conn) {
	if v, ok := s.windows.LoadAndDelete(conn); ok {
		wc := v.(*windowCharge)
		wc.acct.release(wc.n.Load())
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
	u.files.release() // every caller has closed its file (or a commit or failure that finished it is closing it)
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
		// Small to start with (see initialConnWindow); they grow with use.
		InitialStreamReceiveWindow:     initialStreamWindow,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: initialConnWindow,
		// Bounds what one connection can make the server buffer; ample for
		// the bandwidth-delay product of a 100 Mbit/s link at 300 ms.
		MaxConnectionReceiveWindow: 32 << 20,
		// Every increase is charged to the client's account, which bounds
		// what each client, and all connections together, can make the
		// server buffer.
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
	if left, need := s.transferMemory(), max(minTransferMemory, 2*s.bufferFloor()); left < need {
		pc.Close()
		return fmt.Errorf("quicsrv: a memory budget of %d bytes leaves %d for transfers once the initial windows of %d connections (%d bytes each) are set aside, under the %d needed: raise the budget or lower the connection limit",
			s.memoryBudget(), left, s.maxConns(), initialConnWindow, need)
	}
	tr := &quic.Transport{Conn: pc, VerifySourceAddress: s.askRetry}
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
		if !s.makeRoomLocked(sess) {
			n := len(s.sessions)
			s.mu.Unlock()
			s.refusals.note(log, "refusing connections: too many open", "limit", s.maxConns())
			conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeLimit), fmt.Sprintf("server busy: %d connections open; try again later", n))
			continue
		}
		s.sessions[sess] = struct{}{}
		s.handshaking = append(s.handshaking, sess)
		s.perAddr[sess.addr]++
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess.run()
			s.mu.Lock()
			delete(s.sessions, sess)
			s.authenticatedLocked(sess) // if it never did
			s.mu.Unlock()
			s.releaseWindow(conn)
		}()
	}
}

// makeRoomLocked makes room for sess, a new connection, among those not
// authenticated yet: over MaxHandshakes in all or MaxHandshakesPerAddr
// from its address, the oldest of them (from that address) is closed. It
// reports false if sess cannot come in: MaxConns are open, all of them
// authenticated. s.mu is held.
func (s *Server) makeRoomLocked(sess *session) bool {
	if s.perAddr == nil {
		s.perAddr = make(map[string]int)
	}
	evict := func(match func(*session) bool, why string) bool {
		for _, old := range s.handshaking {
			if match(old) {
				s.authenticatedLocked(old) // no longer counted: it is closing
				s.refusals.note(s.logger(), "closing connections that had not authenticated, to make room", "why", why)
				old.closeWith(proto.CodeLimit, "server busy: "+why+"; try again")
				return true
			}
		}
		return false
	}
	if s.perAddr[sess.addr] >= s.maxHandshakesPerAddr() {
		evict(func(o *session) bool { return o.addr == sess.addr }, "too many connections from one address waiting to authenticate")
	}
	if len(s.handshaking) >= s.maxHandshakes() {
		evict(func(*session) bool { return true }, "too many connections waiting to authenticate")
	}
	if len(s.sessions)-s.evictedLocked() < s.maxConns() {
		return true
	}
	return evict(func(*session) bool { return true }, "the connection limit is reached")
}

// evictedLocked counts the sessions closed to make room that have not
// ended yet: they are still in s.sessions but hold no place.
func (s *Server) evictedLocked() int {
	n := 0
	for sess := range s.sessions {
		if sess.evicted {
			n++
		}
	}
	return n
}

// authenticatedLocked takes sess off the list of connections not yet
// authenticated, if it is there. s.mu is held.
func (s *Server) authenticatedLocked(sess *session) {
	i := slices.Index(s.handshaking, sess)
	if i < 0 {
		return
	}
	s.handshaking = slices.Delete(s.handshaking, i, i+1)
	if s.perAddr[sess.addr]--; s.perAddr[sess.addr] <= 0 {
		delete(s.perAddr, sess.addr)
	}
	if sess.authenticatedAt.IsZero() {
		sess.evicted = true // taken off without authenticating: closing
	}
}

// underLoad reports whether new connections must prove their address
// (QUIC Retry, one round trip more) before the server keeps any state for
// them: when over half of MaxHandshakes connections wait to authenticate.
func (s *Server) underLoad(net.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.handshaking) > s.maxHandshakes()/2
}

// askRetry is the transport's VerifySourceAddress: a connection without
// a proven address answers a Retry when the server is under load.
func (s *Server) askRetry(a net.Addr) bool {
	if !s.underLoad(a) {
		return false
	}
	s.retries.Add(1)
	return true
}

// admitClient counts an authenticated session of client c, or refuses it
// over the per-client limit. An admitted session leaves the connections
// waiting to authenticate, and its window may grow, charged to c's
// account, which it returns.
func (s *Server) admitClient(sess *session, c store.ClientID) (*clientState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perClient == nil {
		s.perClient = make(map[store.ClientID]int)
	}
	if n := s.perClient[c]; n >= s.maxConnsPerClient() {
		return nil, proto.Errorf(proto.CodeLimit, "this client has %d connections open, the server's limit; close some or try again later", n)
	}
	s.perClient[c]++
	sess.authenticatedAt = time.Now()
	s.authenticatedLocked(sess)
	st := s.clientStateLocked(c)
	s.windows.Store(sess.conn, &windowCharge{acct: st.windows})
	return st, nil
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

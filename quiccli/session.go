package quiccli

import (
	"cmp"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// Session is one authenticated connection to a server, with its session
// key. Requests run concurrently over it; chunks travel on data streams.
type Session struct {
	ClientID [16]byte

	conn      *quic.Conn
	tr        *quic.Transport // the first transport: it must stay open for the connection
	newSocket func() (net.PacketConn, error)
	extra     []*quic.Transport // transports of migrated paths; guarded by mu
	ctrl      *quic.Stream
	sealer    *proto.Sealer
	opener    *proto.Opener
	chunkSize int
	// restoreBufs lends the data streams of restores their chunk buffers.
	restoreBufs *alignedBuffers
	streams     int

	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	wmu  sync.Mutex
	wbuf []byte

	mu      sync.Mutex
	nextReq uint32
	calls   map[uint32]*call        // open requests, by req
	xfers   map[uint32]*call        // uploads, by transfer number
	sinks   map[uint32]*restoreSink // restores, by transfer number
	pending map[uint32]*restoreSink // restores awaiting RestoreReady, by req
	bound   chan struct{}           // closed and replaced whenever a sink is bound
	sender  *proto.ChunkSender

	cc      quic.Congestion
	limit   *quic.RateLimit
	ccMoves atomic.Int64                    // controllers put back after a path switch, for tests
	retired atomic.Bool                     // a peer auto took out of the send (parallel.go)
	ctl     atomic.Pointer[quic.Controller] // our congestion controller on conn; nil under Reno

	peers peerGroup // more connections carrying chunks of uploads opened here (parallel.go)
	load  sendLoad  // what sender has queued, and its pace (parallel.go)
}

// call is one request in flight: the messages for it arrive on ch.
type call struct {
	req  uint32
	ch   chan proto.Message
	done chan struct{} // closed by the owner when it stops listening
	xfer uint32        // the transfer the server opened for it; guarded by Session.mu
}

// dialOptions says how to reach and trust a server.
type dialOptions struct {
	Server      string
	Fingerprint string                         // pinned; "" trusts on first use
	OnFirstUse  func(fp string) error          // records a newly trusted fingerprint
	Streams     int                            // data streams to use at most (0: what the server says)
	Stall       time.Duration                  // silence that makes the path suspect (watchPath; <= 0: never)
	Notice      func(string, ...any)           // what the watchdog does, for the user (Client.notice)
	QUICConfig  func(*quic.Config)             // test hook
	PacketConn  func() (net.PacketConn, error) // test hook: the sockets to dial and migrate from
	Congestion  quic.Congestion                // what paces the client's sends ("": quic.BBR)
	Limit       *quic.RateLimit                // caps the sends of every connection (nil: none)
	Pace        uint64                         // asks the server to send at most this many bytes per second (0: no limit)
}

// testHookSessionKey, if set, sees every session key (tests check that
// keys are fresh and never stored).
var testHookSessionKey func(*proto.SessionKey)

// hello builds the first message of a session from the TLS exporter value.
type hello func(ekm []byte) (proto.Message, error)

func clientQUICConfig(stall time.Duration) *quic.Config {
	return &quic.Config{
		Versions:                       []quic.Version{quic.Version1},
		HandshakeIdleTimeout:           10 * time.Second,
		MaxIdleTimeout:                 60 * time.Second,
		KeepAlivePeriod:                keepAliveFor(stall), // keeps NAT mappings alive, and the path watchdog informed
		MaxIncomingStreams:             -1,                  // the server opens no bidirectional streams
		MaxIncomingUniStreams:          proto.MaxStreams,
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: 4 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
	}
}

// dial connects, sends the hello message and waits for Welcome. priv
// unwraps the session key.
func dial(ctx context.Context, o dialOptions, priv *rsa.PrivateKey, mkHello hello) (*Session, error) {
	raddr, err := net.ResolveUDPAddr("udp", o.Server)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve server address %q: %v", o.Server, err)
	}
	newSocket := o.PacketConn
	if newSocket == nil {
		newSocket = func() (net.PacketConn, error) { return net.ListenUDP("udp", nil) }
	}
	pc, err := newSocket()
	if err != nil {
		return nil, fmt.Errorf("cannot open a UDP socket: %v", err)
	}
	tr := &quic.Transport{Conn: pc}
	qc := clientQUICConfig(o.Stall)
	if o.QUICConfig != nil {
		o.QUICConfig(qc)
	}
	tlsConf := certs.ClientConfig(o.Fingerprint, o.OnFirstUse, proto.ALPN)
	conn, err := tr.Dial(ctx, raddr, tlsConf, qc)
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, dialError(o, err)
	}
	s := &Session{conn: conn, tr: tr, newSocket: newSocket,
		calls:   make(map[uint32]*call),
		xfers:   make(map[uint32]*call),
		sinks:   make(map[uint32]*restoreSink),
		pending: make(map[uint32]*restoreSink),
		bound:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancelCause(conn.Context())
	s.cc, s.limit = cmp.Or(o.Congestion, quic.BBR), o.Limit
	ctl, err := quic.UseCongestion(conn, s.cc, s.limit)
	if err != nil {
		s.closeTransport()
		return nil, err
	}
	s.ctl.Store(ctl)
	if err := s.handshake(ctx, o, priv, mkHello); err != nil {
		s.closeTransport()
		return nil, err
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.readLoop() }()
	go func() { defer s.wg.Done(); s.acceptData() }()
	if o.Pace > 0 {
		if err := s.pace(ctx, o.Pace); err != nil {
			s.Close()
			return nil, err
		}
	}
	if o.Stall > 0 {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.watchPath(o.Stall, o.Notice) }()
	}
	return s, nil
}

// Migrate moves the connection to a new local UDP socket: it probes the
// path from the new socket and switches to it once the server answers.
// Transfers under way carry on. quic-go sends the probe only while
// its congestion window has room: always when the old path still works,
// but not when an upload's bytes are stuck in flight on a dead one (see
// watchPath, which calls this on its own; send's reconnect and resume take
// over then).
//
// It moves twice, to two new sockets one after the other. quic-go v0.61
// (the fork we use) answers the server's PATH_CHALLENGE for a new path on
// the path the client used until then, which after a network change is
// dead: the server never hears the answer, and keeps sending to the dead
// address until its probe of the new path times out, which under a stuck
// upload can take longer than the client waits. The second move's
// challenge is answered on the first new path, which works, so the server
// validates the second and follows the client there at once. If the
// second move fails, the connection stays on the first.
func (s *Session) Migrate(ctx context.Context) error {
	first, err := s.moveOnce(ctx)
	if err != nil {
		return err
	}
	moved := first
	// The switch happens in the connection's goroutine: wait until it
	// has sent on the first new path, so that it answers from there.
	t := time.NewTimer(time.Second)
	select {
	case <-first.done:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	if second, err := s.moveOnce(ctx); err == nil {
		moved = second
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.nudge() }()
	go func() { defer s.wg.Done(); s.followPath(moved) }()
	return nil
}

// moveOnce probes a path from a new socket and switches the connection to
// it. The firstWrite it returns learns when the connection has switched.
func (s *Session) moveOnce(ctx context.Context) (*firstWrite, error) {
	pc, err := s.newSocket()
	if err != nil {
		return nil, fmt.Errorf("migrate: new socket: %w", err)
	}
	pc, moved := watchFirstWrite(pc)
	tr := &quic.Transport{Conn: pc}
	// Once the connection has used tr, closing tr closes the connection
	// too: tr stays open, failed or not, as long as the session.
	s.mu.Lock()
	if s.ctx.Err() != nil { // closed already: closeTransport would not see tr
		s.mu.Unlock()
		pc.Close()
		return nil, fmt.Errorf("migrate: %w", context.Cause(s.ctx))
	}
	s.extra = append(s.extra, tr)
	s.mu.Unlock()
	path, err := s.conn.AddPath(tr)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if err := path.Probe(ctx); err != nil {
		path.Close()
		return nil, fmt.Errorf("migrate: probing the new path: %w", err)
	}
	if err := path.Switch(); err != nil {
		path.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	// Armed only now: the probes went out on this socket before the
	// switch. The writes after it come from the switched connection.
	moved.arm()
	return moved, nil
}

// After a switch, nudge has the connection send packets the server counts
// as traffic (not probes) on the new path, every nudgeEvery for
// nudgeFor. The server moves its side of the connection, and the
// restores it sends, only once it has validated the new path and then
// heard such a packet from it, and a client that only receives has
// nothing of its own to send.
//
// The validation needs this, too: quic-go v0.61 (the fork we use) answers
// the server's PATH_CHALLENGE on the path the client used until then,
// which after a network change is dead, so the challenge goes unanswered.
// The server drops the path after its probe timeout (1 s) and challenges
// it again on the next packet from there, which, after the switch, the
// client answers on the new path. Each nudge is an empty data stream,
// which a server accepts and forgets (PROTOCOL.md §2.3); with every data
// stream of the session in use, its own chunks do the same.
func (s *Session) nudge() {
	t := time.NewTicker(nudgeEvery)
	defer t.Stop()
	for range nudgeFor / nudgeEvery {
		if st, err := s.conn.OpenUniStream(); err == nil {
			st.Close()
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

const (
	nudgeEvery = 250 * time.Millisecond
	nudgeFor   = 2 * time.Second
	// settleAfterMove is how long the watchdog lets a moved connection
	// stay silent before it acts again: the server may take its probe
	// timeout (1 s) and a round trip or two to follow (see nudge).
	settleAfterMove = 3 * time.Second
)

func (s *Session) closeTransport() {
	s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "")
	s.cancel(errSessionClosed)
	s.mu.Lock()
	trs := append([]*quic.Transport{s.tr}, s.extra...)
	s.extra = nil
	s.mu.Unlock()
	for _, tr := range trs {
		tr.Close()
		tr.Conn.Close()
	}
}

var errSessionClosed = errors.New("session closed")

// dialError turns a failed dial into a sentence that says what to do.
func dialError(o dialOptions, err error) error {
	var mm *certs.MismatchError
	if errors.As(err, &mm) {
		return &CertChangedError{Server: o.Server, Pinned: mm.Pinned, Presented: mm.Presented}
	}
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	if errors.As(err, &idle) || errors.As(err, &hs) || errors.Is(err, context.DeadlineExceeded) {
		return &unreachableError{server: o.Server, err: err}
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode.IsCryptoError() {
		return fmt.Errorf("TLS handshake with %s failed (%v): is it a qbackupd server?", o.Server, te.ErrorMessage)
	}
	return fmt.Errorf("cannot connect to %s: %w", o.Server, err)
}

// unreachableError is a server that did not answer; it wraps why (a
// timeout), so that retryable can tell.
type unreachableError struct {
	server string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("no answer from %s: is qbackupd running there, and is UDP to that port allowed?", e.server)
}

func (e *unreachableError) Unwrap() error { return e.err }

// CertChangedError reports a server certificate that differs from the
// pinned one.
type CertChangedError struct{ Server, Pinned, Presented string }

func (e *CertChangedError) Error() string {
	return fmt.Sprintf("the certificate of %s has changed: pinned sha256 %s, server presented sha256 %s. "+
		"If the server's certificate was replaced on purpose, check the new fingerprint with its operator "+
		"(qbackupd logs it at start) and run: qbackup register --server %s --name NAME --fingerprint %s. "+
		"Otherwise someone may be intercepting the connection: do not proceed.",
		e.Server, e.Pinned, e.Presented, e.Server, e.Presented)
}

func (s *Session) handshake(ctx context.Context, o dialOptions, priv *rsa.PrivateKey, mkHello hello) error {
	ctrl, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return s.connError(err)
	}
	s.ctrl = ctrl
	cs := s.conn.ConnectionState().TLS
	ekm, err := cs.ExportKeyingMaterial(proto.ExporterLabel, nil, proto.ExporterLen)
	if err != nil {
		return err
	}
	m, err := mkHello(ekm)
	if err != nil {
		return err
	}
	if err := s.send(m); err != nil {
		return s.connError(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		ctrl.SetReadDeadline(dl)
	}
	reply, err := proto.NewMessageReader(ctrl).Read()
	ctrl.SetReadDeadline(time.Time{})
	if err != nil {
		return s.connError(err)
	}
	w, ok := reply.(*proto.Welcome)
	if !ok {
		if e, ok := reply.(*proto.ErrorMessage); ok {
			return e.Err()
		}
		return proto.Errorf(proto.CodeProtocol, "server answered %v instead of Welcome", reply.Type())
	}
	key, err := proto.UnwrapKey(priv, w.WrappedKey)
	if err != nil {
		return err
	}
	defer clear(key[:])
	if testHookSessionKey != nil {
		testHookSessionKey(&key)
	}
	if s.sealer, err = proto.NewSealer(&key, proto.ClientToServer); err != nil {
		return err
	}
	if s.opener, err = proto.NewOpener(&key, proto.ServerToClient); err != nil {
		return err
	}
	s.ClientID = w.ClientID
	s.chunkSize = int(w.ChunkSize)
	s.restoreBufs = newAlignedBuffers(s.chunkSize + proto.TagSize)
	s.streams = max(1, int(w.Streams))
	if o.Streams > 0 && o.Streams < s.streams {
		s.streams = o.Streams
	}
	return nil
}

// connError maps a connection-level error to the protocol error the server
// closed the connection with, if it did.
func (s *Session) connError(err error) error {
	var app *quic.ApplicationError
	if errors.As(err, &app) && app.Remote {
		return &proto.Error{Code: proto.ErrorCode(app.ErrorCode), Message: app.ErrorMessage}
	}
	if errors.As(err, &app) && !app.Remote && app.ErrorCode == 0 {
		return errSessionClosed
	}
	var idle *quic.IdleTimeoutError
	if errors.As(err, &idle) {
		return errors.New("lost the connection to the server (nothing heard for a minute): it may have stopped, or the network is down; run the command again when it is back")
	}
	return err
}

// endedBy reports whether err, from a request of this session, means the
// session itself ended (Err is then set). A stream can fail with the
// connection's error a moment before the connection's context ends: such
// an error waits for it, so that the request counts as lost with the
// session (and is retried in the next) rather than as failed on its own.
func (s *Session) endedBy(err error) bool {
	if s.Err() != nil {
		return true
	}
	if !connectionError(err) {
		return false
	}
	t := time.NewTimer(connEndWait)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return true
	case <-t.C:
		return s.Err() != nil
	}
}

// connEndWait bounds how long endedBy waits for a failed connection's
// context to end; it ends at once, as the connection closes.
const connEndWait = 5 * time.Second

// connectionError reports whether err is the end of the whole QUIC
// connection, not of one stream.
func connectionError(err error) bool {
	var (
		idle  *quic.IdleTimeoutError
		app   *quic.ApplicationError
		tr    *quic.TransportError
		reset *quic.StatelessResetError
		hs    *quic.HandshakeTimeoutError
	)
	return errors.As(err, &idle) || errors.As(err, &app) || errors.As(err, &tr) ||
		errors.As(err, &reset) || errors.As(err, &hs)
}

// Err returns why the session ended, or nil while it is open.
func (s *Session) Err() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return s.connError(context.Cause(s.ctx))
}

// Close ends the session politely.
func (s *Session) Close() error {
	s.mu.Lock()
	sender := s.sender
	s.mu.Unlock()
	var err error
	if sender != nil {
		err = sender.Close()
	}
	s.ctrl.Close()
	s.closeTransport()
	s.wg.Wait()
	return err
}

// send writes one message on the control stream. A message too large for
// a control frame (a name over the limits) fails here, not at the server,
// which would end the session.
func (s *Session) send(m proto.Message) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wbuf = proto.AppendMessage(s.wbuf[:0], m)
	if len(s.wbuf) > proto.MaxControlFrame+5 {
		return fmt.Errorf("%v of %d bytes is over the protocol's limit", m.Type(), len(s.wbuf))
	}
	_, err := s.ctrl.Write(s.wbuf)
	if err != nil {
		return s.connError(err)
	}
	return nil
}

// newCall registers a request number for a new request.
func (s *Session) newCall() *call {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextReq++
	c := &call{req: s.nextReq, ch: make(chan proto.Message, 16), done: make(chan struct{})}
	s.calls[c.req] = c
	return c
}

// endCall forgets a request and everything routed to it. It returns the
// transfer the server opened for the request, even if the owner never read
// the answer that opened it, so the owner can release it.
func (s *Session) endCall(c *call) uint32 {
	s.mu.Lock()
	delete(s.calls, c.req)
	xfer := c.xfer
	if xfer != 0 && s.xfers[xfer] == c {
		delete(s.xfers, xfer)
	}
	s.mu.Unlock()
	close(c.done)
	return xfer
}

// wait returns the next message for c.
func (s *Session) wait(ctx context.Context, c *call) (proto.Message, error) {
	select {
	case m := <-c.ch:
		if e, ok := m.(*proto.ErrorMessage); ok {
			return nil, e.Err()
		}
		return m, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-s.ctx.Done():
		return nil, s.Err()
	}
}

func (s *Session) deliver(c *call, m proto.Message) {
	if c == nil {
		return // a request the owner gave up on
	}
	select {
	case c.ch <- m:
	case <-c.done:
	case <-s.ctx.Done():
	}
}

// readLoop routes the server's messages to the requests they answer.
func (s *Session) readLoop() {
	mr := proto.NewMessageReader(s.ctrl)
	for {
		m, err := mr.Read()
		if err != nil {
			if err == io.EOF {
				err = errors.New("the server ended the session (it may be shutting down)")
			}
			var pe *proto.ParseError
			if errors.As(err, &pe) {
				s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeProtocol), "malformed message")
			}
			s.cancel(err)
			return
		}
		var c *call
		s.mu.Lock()
		switch m := m.(type) {
		case *proto.ErrorMessage:
			c = s.calls[m.Req]
			if m.Req == 0 {
				s.mu.Unlock()
				s.cancel(m.Err())
				return
			}
			if sink := s.pending[m.Req]; sink != nil {
				delete(s.pending, m.Req)
			}
		case *proto.UploadReady:
			c = s.calls[m.Req]
			if c != nil && m.Status == proto.ReadySend {
				s.xfers[m.Xfer] = c
				c.xfer = m.Xfer
			}
			if c == nil && m.Status == proto.ReadySend {
				// Its owner gave up before the answer came: release it.
				s.goSend(&proto.UploadAbort{Xfer: m.Xfer})
			}
		case *proto.UploadChecksum:
			c = s.xfers[m.Xfer]
		case *proto.UploadResult:
			c = s.xfers[m.Xfer]
			delete(s.xfers, m.Xfer)
		case *proto.ListEntry:
			c = s.calls[m.Req]
		case *proto.ListEnd:
			c = s.calls[m.Req]
		case *proto.Paced:
			c = s.calls[m.Req]
		case *proto.RestoreReady:
			c = s.calls[m.Req]
			if c != nil {
				c.xfer = m.Xfer
			}
			sink := s.pending[m.Req]
			delete(s.pending, m.Req)
			if sink == nil {
				// The owner gave up: drop the chunks, release the transfer.
				sink = closedSink()
				s.goSend(&proto.RestoreDone{Xfer: m.Xfer, Status: 1})
			} else if sink.bind(m) != nil {
				// The file could not be sized: the sink is finished with
				// that error, drops the chunks, and its owner releases it.
				sink = closedSink()
			}
			s.sinks[m.Xfer] = sink
			close(s.bound)
			s.bound = make(chan struct{})
		default:
			s.mu.Unlock()
			s.cancel(proto.Errorf(proto.CodeProtocol, "server sent %v, which a client never receives", m.Type()))
			s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeProtocol), "unexpected message")
			return
		}
		s.mu.Unlock()
		s.deliver(c, m)
	}
}

// goSend sends a message from a goroutine of its own, for the read loop,
// which must not block on the control stream's flow control.
func (s *Session) goSend(m proto.Message) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.send(m)
	}()
}

// forgetSink drops a finished restore's entry once no chunk can come for
// it any more.
func (s *Session) forgetSink(xfer uint32) {
	s.mu.Lock()
	delete(s.sinks, xfer)
	s.mu.Unlock()
}

// chunkSender returns the session's sender of client-to-server chunks.
func (s *Session) chunkSender() *proto.ChunkSender {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sender == nil {
		open := func(ctx context.Context) (io.WriteCloser, error) {
			return s.conn.OpenUniStreamSync(ctx)
		}
		s.sender = proto.NewChunkSender(s.ctx, s.sealer, s.streams, s.chunkSize, open)
	}
	return s.sender
}

// acceptData serves the data streams the server opens for restores.
func (s *Session) acceptData() {
	for {
		rs, err := s.conn.AcceptUniStream(s.ctx)
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.readData(rs); err != nil && s.ctx.Err() == nil {
				s.cancel(err)
				s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeOf(err)), "bad data stream")
			}
		}()
	}
}

func (s *Session) readData(rs *quic.ReceiveStream) error {
	var t [1]byte
	if _, err := io.ReadFull(rs, t[:]); err != nil {
		return nil
	}
	if t[0] != proto.StreamTypeChunks {
		return proto.Errorf(proto.CodeProtocol, "server opened a data stream of unknown type %#x", t[0])
	}
	var cur *restoreSink
	resolve := func(xfer uint32) (*[16]byte, error) {
		sink, err := s.sinkFor(xfer)
		if err != nil {
			return nil, err
		}
		cur = sink
		return &sink.id, nil
	}
	cr := proto.NewChunkReader(rs, uint32(s.chunkSize))
	cr.Buffers = s.restoreBufs
	handle := func(h *proto.ChunkHeader, p []byte) error {
		return cur.receive(h.Offset, p, cr.Detach)
	}
	err := proto.ReadChunkFrames(cr, s.opener, resolve, handle)
	var serr *quic.StreamError
	if errors.As(err, &serr) {
		return nil
	}
	return err
}

// sinkFor finds the restore a chunk belongs to. RestoreReady travels on the
// control stream and may arrive after the first chunks, so it waits a
// little for the binding.
func (s *Session) sinkFor(xfer uint32) (*restoreSink, error) {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		sink := s.sinks[xfer]
		bound := s.bound
		s.mu.Unlock()
		if sink != nil {
			if sink.isClosed() {
				return nil, proto.ErrSkipChunk
			}
			return sink, nil
		}
		select {
		case <-bound:
		case <-timeout.C:
			return nil, proto.Errorf(proto.CodeBadChunk, "chunk for transfer %d, which the server never announced", xfer)
		case <-s.ctx.Done():
			return nil, s.Err()
		}
	}
}

// publicKeyDER is the PKIX encoding of a client's public key.
func publicKeyDER(priv *rsa.PrivateKey) ([]byte, error) {
	return x509.MarshalPKIXPublicKey(&priv.PublicKey)
}

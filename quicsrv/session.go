package quicsrv

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/store"
)

// session is one client connection: the control stream, the data streams
// it opens, and the transfers under way.
type session struct {
	srv    *Server
	conn   *quic.Conn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup  // every goroutine the session starts
	pacing *quic.RateLimit // the cap on what the session sends (Pace); nil under Reno

	ctrl *quic.Stream
	wmu  sync.Mutex
	wbuf []byte

	client   store.Client
	admitted bool // counted in the server's per-client connections
	state    *clientState
	acct     *account // what the client's chunk buffers hold is charged to

	// addr is the client's IP address; authenticatedAt (zero until then)
	// and evicted (closed to make room) are guarded by srv.mu.
	addr            string
	authenticatedAt time.Time
	evicted         bool
	opener          *proto.Opener
	sealer          *proto.Sealer

	mu       sync.Mutex
	uploads  map[uint32]*upload
	restores map[uint32]*restore
	// Uploads get odd transfer numbers and restores even ones, so the
	// kind of a number is known after the transfer has ended.
	nextUpload, nextRestore uint32
	opening                 int // upload requests being handled (startRequest)
	reserved                int // upload numbers issued, not yet in uploads (newXferLocked)
	sender                  *proto.ChunkSender
	draining                bool
	ctrlDone                bool        // the control stream's send side is closed
	lingerTimer             *time.Timer // closes a drained connection; guarded by wmu
}

func newSession(srv *Server, conn *quic.Conn, log *slog.Logger) *session {
	ctx, cancel := context.WithCancel(conn.Context())
	addr := conn.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	return &session{
		srv:         srv,
		conn:        conn,
		addr:        addr,
		log:         log,
		ctx:         ctx,
		cancel:      cancel,
		uploads:     make(map[uint32]*upload),
		restores:    make(map[uint32]*restore),
		nextUpload:  1,
		nextRestore: 2,
	}
}

// closeWith ends the connection with a protocol error code.
func (ss *session) closeWith(code proto.ErrorCode, msg string) {
	ss.conn.CloseWithError(quic.ApplicationErrorCode(code), msg)
	ss.cancel()
}

// fail ends the connection because of err, logging it unless it is just
// the connection going away.
func (ss *session) fail(err error) {
	if ss.ctx.Err() != nil {
		return
	}
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	if errors.As(err, &appErr) || errors.As(err, &idle) || errors.Is(err, context.Canceled) {
		ss.cancel()
		return
	}
	code := proto.CodeOf(err)
	switch {
	case ss.state == nil:
		// Not authenticated: a stranger may cause this at will.
		ss.srv.refusals.note(ss.srv.logger(), "closing connections that failed to authenticate", "code", code.String(), "last", err.Error())
	case code == proto.CodeAborted:
		// A client that went silent mid-chunk or stopped reading: most
		// often its network died, which is no trouble of the server's.
		ss.log.Info("closing connection", "code", code.String(), "err", err)
	default:
		ss.log.Warn("closing connection", "code", code.String(), "err", err)
	}
	ss.closeWith(code, errorText(err))
}

// errorText is the message sent to the peer: the protocol error's own
// text, capped at a character boundary, or a generic sentence for an
// internal error, whose details stay in the server's log.
func errorText(err error) string {
	var pe *proto.Error
	s := ""
	switch {
	case errors.As(err, &pe):
		s = pe.Message
	case proto.CodeOf(err) == proto.CodeProtocol:
		s = err.Error()
	default:
		return "internal server error; the server's log has the details"
	}
	s = strings.ToValidUTF8(s, "?")
	if len(s) > 256 {
		s = s[:256]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

func (ss *session) run() {
	defer ss.cleanup()
	ss.useCongestion()
	if err := ss.handshake(); err != nil {
		ss.fail(err)
		return
	}
	ss.log = ss.log.With("client", ss.client.Name, "id", ss.client.ID.String())
	ss.log.Info("session started")
	ss.keepCongestion()
	ss.transferEnded() // a shutdown that began during the handshake
	ss.wg.Add(2)
	go func() {
		defer ss.wg.Done()
		ss.acceptData()
	}()
	go func() {
		defer ss.wg.Done()
		ss.watch()
	}()
	err := ss.controlLoop()
	if err != nil {
		ss.fail(err)
		return
	}
	ss.log.Info("session ended")
}

func (ss *session) cleanup() {
	ss.cancel()
	ss.wmu.Lock()
	if ss.lingerTimer != nil {
		ss.lingerTimer.Stop()
	}
	ss.wmu.Unlock()
	ss.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "")
	ss.wg.Wait()
	ss.mu.Lock()
	ups := ss.uploads
	rests := ss.restores
	ss.uploads, ss.restores = nil, nil
	sender := ss.sender
	ss.mu.Unlock()
	for _, u := range ups {
		if u.owner == ss {
			ss.park(u)
		}
	}
	for _, r := range rests {
		r.close()
	}
	if sender != nil {
		sender.Close()
	}
	if ss.admitted {
		ss.srv.leaveClient(ss.client.ID)
	}
}

// drain asks the session to end once its transfers are done: new requests
// are refused with CodeShutdown, and when nothing is left in flight the
// server finishes the control stream, after every answer already written,
// so the client closes the connection having heard them all.
func (ss *session) drain() {
	ss.mu.Lock()
	ss.draining = true
	ss.mu.Unlock()
	ss.wmu.Lock()
	authenticated := ss.opener != nil
	ss.wmu.Unlock()
	if !authenticated {
		// Mid-handshake: nothing to finish.
		ss.closeWith(proto.CodeShutdown, "server shutting down")
		return
	}
	ss.transferEnded()
}

// transferEnded finishes the control stream of a draining session whose
// last transfer ended.
func (ss *session) transferEnded() {
	ss.mu.Lock()
	idle := ss.draining && ss.opening == 0 && len(ss.uploads) == 0 && len(ss.restores) == 0
	ss.mu.Unlock()
	if !idle {
		return
	}
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if ss.ctrlDone {
		return
	}
	ss.ctrlDone = true
	ss.ctrl.Close()
	// A client closes on seeing the stream end. One that does not is cut
	// off once the answers had time to arrive: a few round trips.
	st := ss.conn.ConnectionStats()
	linger := min(max(100*time.Millisecond, 3*(st.SmoothedRTT+4*st.MeanDeviation)), 5*time.Second)
	ss.lingerTimer = time.AfterFunc(linger, func() {
		ss.closeWith(proto.CodeShutdown, "server shutting down")
	})
}

// handshake accepts the control stream, authenticates the client and sends
// Welcome with a fresh session key.
func (ss *session) handshake() error {
	deadline := time.Now().Add(ss.srv.handshakeTimeout())
	ctx, cancel := context.WithDeadline(ss.ctx, deadline)
	defer cancel()
	ctrl, err := ss.conn.AcceptStream(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return proto.Errorf(proto.CodeProtocol, "no control stream within %v", ss.srv.handshakeTimeout())
	}
	if err != nil {
		return fmt.Errorf("waiting for the control stream: %w", err)
	}
	ss.wmu.Lock()
	ss.ctrl = ctrl
	ss.wmu.Unlock()
	ctrl.SetReadDeadline(deadline)
	t, payload, err := proto.NewMessageReader(ctrl).ReadRaw()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return proto.Errorf(proto.CodeProtocol, "no Register or Reconnect within %v", ss.srv.handshakeTimeout())
	}
	if err == io.EOF {
		return proto.Errorf(proto.CodeProtocol, "the control stream ended before Register or Reconnect")
	}
	if err != nil {
		return err
	}
	ctrl.SetReadDeadline(time.Time{})
	if t == proto.TypeRegister || t == proto.TypeReconnect {
		// Check the version before the layout it governs.
		if v, ok := proto.HelloVersion(payload); ok && v != proto.Version {
			return proto.Errorf(proto.CodeVersion, "protocol version %d is not supported; this server speaks %d", v, proto.Version)
		}
	}
	m, err := proto.ParseMessage(t, payload)
	if err != nil {
		return err
	}

	ekm, err := ss.exporter()
	if err != nil {
		return err
	}
	var pub *rsa.PublicKey
	switch m := m.(type) {
	case *proto.Register:
		if pub, err = proto.ParsePublicKey(m.PublicKey); err != nil {
			return err
		}
		if err := proto.VerifyProof(pub, proto.RegisterDigest(ekm, m.Name, m.PublicKey), m.Signature); err != nil {
			return err
		}
		c, created, err := ss.srv.Store.Admit(ss.ctx, m.Name, m.PublicKey, ss.srv.Registration, m.Invite)
		switch {
		case errors.Is(err, store.ErrRegistrationClosed):
			ss.log.Info("registration refused: closed", "name", m.Name)
			return proto.Errorf(proto.CodeRegistrationClosed, "this server accepts no new clients; ask its operator")
		case errors.Is(err, store.ErrBadInvite) && m.Invite == "":
			ss.log.Info("registration refused: no invite", "name", m.Name)
			return proto.Errorf(proto.CodeRegistrationClosed, "this server registers new clients only with an invite; ask its operator for one and register with --invite")
		case errors.Is(err, store.ErrBadInvite):
			ss.log.Info("registration refused: bad invite", "name", m.Name)
			return proto.Errorf(proto.CodeRegistrationClosed, "the invite is unknown, used up, expired or revoked; ask the server's operator for a new one")
		case errors.Is(err, store.ErrNameTaken):
			return proto.Errorf(proto.CodeNameTaken, "the name %q is registered with another key", m.Name)
		case errors.Is(err, store.ErrInvalidName):
			return proto.Errorf(proto.CodeInvalidName, "%v", err)
		case err != nil:
			ss.log.Error("register", "err", err)
			return proto.Errorf(proto.CodeInternal, "registration failed on the server")
		}
		ss.client = c
		ss.log.Info("client registered", "name", c.Name, "id", c.ID.String(), "new", created)
	case *proto.Reconnect:
		c, err := ss.srv.Store.Client(ss.ctx, store.ClientID(m.ClientID))
		if errors.Is(err, store.ErrUnknownClient) {
			return proto.Errorf(proto.CodeUnknownClient, "client %x is not registered here", m.ClientID)
		} else if err != nil {
			ss.log.Error("reconnect", "err", err)
			return proto.Errorf(proto.CodeInternal, "reconnect failed on the server")
		}
		if pub, err = proto.ParsePublicKey(c.PublicKey); err != nil {
			return err
		}
		if err := proto.VerifyProof(pub, proto.ReconnectDigest(ekm, m.ClientID), m.Signature); err != nil {
			return err
		}
		ss.client = c
	default:
		return proto.Errorf(proto.CodeProtocol, "the first message must be Register or Reconnect, not %v", m.Type())
	}
	st, err := ss.srv.admitClient(ss, ss.client.ID)
	if err != nil {
		ss.srv.refusals.note(ss.srv.logger(), "refusing connections: too many for one client", "client", ss.client.Name, "limit", ss.srv.maxConnsPerClient())
		return err
	}
	ss.admitted = true
	ss.state, ss.acct = st, st.buffers
	ss.busy()

	key, err := proto.NewSessionKey()
	if err != nil {
		return err
	}
	defer clear(key[:])
	wrapped, err := proto.WrapKey(pub, &key)
	if err != nil {
		return fmt.Errorf("wrapping the session key: %w", err)
	}
	opener, err := proto.NewOpener(&key, proto.ClientToServer)
	if err != nil {
		return err
	}
	sealer, err := proto.NewSealer(&key, proto.ServerToClient)
	if err != nil {
		return err
	}
	// The session counts as authenticated (for drain) from the moment
	// Welcome is written, in one step, so a shutdown cannot end the
	// control stream between the two.
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	ss.opener, ss.sealer = opener, sealer
	ss.wbuf = proto.AppendMessage(ss.wbuf[:0], &proto.Welcome{
		ClientID:   ss.client.ID,
		WrappedKey: wrapped,
		ChunkSize:  uint32(ss.srv.chunkSize()),
		Streams:    uint16(ss.srv.streams()),
	})
	_, err = ss.ctrl.Write(ss.wbuf)
	return err
}

func (ss *session) exporter() ([]byte, error) {
	cs := ss.conn.ConnectionState().TLS
	ekm, err := cs.ExportKeyingMaterial(proto.ExporterLabel, nil, proto.ExporterLen)
	if err != nil {
		return nil, fmt.Errorf("tls exporter: %w", err)
	}
	return ekm, nil
}

// send writes one message on the control stream.
func (ss *session) send(m proto.Message) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if ss.ctrlDone {
		return nil // draining: the client has been told the session is over
	}
	ss.wbuf = proto.AppendMessage(ss.wbuf[:0], m)
	_, err := ss.ctrl.Write(ss.wbuf)
	return err
}

// sendError reports the failure of request req.
func (ss *session) sendError(req uint32, err error) {
	if ss.ctx.Err() != nil {
		// The client is gone, and with it the reason the request failed.
		ss.log.Debug("request ended with the session", "req", req, "err", err)
		return
	}
	code := proto.CodeOf(err)
	if code == proto.CodeInternal {
		ss.log.Error("request failed", "req", req, "err", err)
	}
	ss.send(&proto.ErrorMessage{Req: req, Code: code, Message: errorText(err)})
}

func (ss *session) controlLoop() error {
	mr := proto.NewMessageReader(ss.ctrl)
	for {
		m, err := mr.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		ss.busy()
		if req, ok := requestNumber(m); ok && req == 0 {
			return proto.Errorf(proto.CodeProtocol, "%v with request number 0, which is reserved for the session", m.Type())
		}
		switch m := m.(type) {
		case *proto.UploadRequest:
			turn := ss.srv.queueTurn(ss.client.ID, m.Name)
			ss.startRequest(func() { ss.uploadRequest(m, turn) })
		case *proto.UploadJoin:
			ss.startRequest(func() { ss.uploadJoin(m) })
		case *proto.UploadCommit:
			err = ss.uploadCommit(m.Xfer)
		case *proto.UploadAbort:
			err = ss.uploadAbort(m.Xfer)
		case *proto.ListRequest:
			err = ss.list(m)
		case *proto.RestoreRequest:
			ss.restoreRequest(m.Req, m.Name, m.Version, nil, nil)
		case *proto.RestoreResume:
			ss.restoreRequest(m.Req, m.Name, m.Version, m.Have, &m.SHA256)
		case *proto.RestoreDone:
			err = ss.restoreDone(m)
		case *proto.Pace:
			ss.pace(m)
		default:
			err = proto.Errorf(proto.CodeProtocol, "unexpected %v after the handshake", m.Type())
		}
		if err != nil {
			return err
		}
	}
}

// startRequest runs an upload request in a goroutine of its own: opening
// an upload waits for the store (a group commit under way), and a client
// sending a tree of small files has many requests in flight, so handling
// them one at a time in the control loop would serialise those waits.
// Requests being opened count as transfers for drain; toward MaxTransfers
// once they hold a transfer number (checked in its usual place, after the
// name and the quick check).
// With MaxTransfers requests already being opened, the next runs in the
// control loop, which bounds the goroutines a client can start and slows
// it down rather than refusing it early.
func (ss *session) startRequest(run func()) {
	ss.mu.Lock()
	inline := ss.opening >= ss.srv.maxTransfers()
	ss.opening++
	ss.mu.Unlock()
	done := func() {
		ss.mu.Lock()
		ss.opening--
		ss.mu.Unlock()
		ss.transferEnded()
	}
	if inline {
		run()
		done()
		return
	}
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		run()
		done()
	}()
}

// requestNumber returns the request number of a client request.
func requestNumber(m proto.Message) (uint32, bool) {
	switch m := m.(type) {
	case *proto.UploadRequest:
		return m.Req, true
	case *proto.UploadJoin:
		return m.Req, true
	case *proto.ListRequest:
		return m.Req, true
	case *proto.RestoreRequest:
		return m.Req, true
	case *proto.RestoreResume:
		return m.Req, true
	case *proto.Pace:
		return m.Req, true
	}
	return 0, false
}

// storeErr maps a store error to a protocol error.
func storeErr(err error) error {
	switch {
	case errors.Is(err, store.ErrInvalidName):
		return proto.Errorf(proto.CodeInvalidName, "%s", strings.TrimPrefix(err.Error(), store.ErrInvalidName.Error()+": "))
	case errors.Is(err, syscall.ENAMETOOLONG):
		return proto.Errorf(proto.CodeInvalidName, "the name is too long for the server's file system once stored; it cannot keep this one")
	case errors.Is(err, store.ErrNotFound):
		return proto.Errorf(proto.CodeNotFound, "no such file or version")
	case errors.Is(err, store.ErrNoSpace):
		return proto.Errorf(proto.CodeNoSpace, "its operator must free space before this can be stored; what is stored is safe")
	case errors.Is(err, syscall.EFBIG):
		return proto.Errorf(proto.CodeTooLarge, "the file is larger than the server's file system allows")
	}
	return err
}

// newXferLocked reserves a transfer number for an upload or a restore;
// the caller holds ss.mu.
func (ss *session) newXferLocked(isRestore bool) (uint32, error) {
	if ss.draining {
		return 0, proto.Errorf(proto.CodeShutdown, "the server is shutting down")
	}
	if len(ss.uploads)+len(ss.restores)+ss.reserved >= ss.srv.maxTransfers() {
		return 0, proto.Errorf(proto.CodeLimit, "more than %d transfers open in one session", ss.srv.maxTransfers())
	}
	next := &ss.nextUpload
	if isRestore {
		next = &ss.nextRestore
	}
	if *next > math.MaxUint32-2 {
		return 0, proto.Errorf(proto.CodeLimit, "transfer numbers exhausted; open a new session")
	}
	x := *next
	*next += 2
	if !isRestore {
		ss.reserved++ // until the upload is in ss.uploads (or given up): see unreserveLocked
	}
	return x, nil
}

// unreserveLocked ends the reservation newXferLocked made for an upload
// number, once the upload is in ss.uploads or will not be; the caller
// holds ss.mu. Upload requests run concurrently, so between the two an
// upload counts here toward MaxTransfers.
func (ss *session) unreserveLocked() { ss.reserved-- }

// issuedUploadLocked reports whether x was issued to an upload that has
// ended since; the caller holds ss.mu.
func (ss *session) issuedUploadLocked(x uint32) bool { return x%2 == 1 && x < ss.nextUpload }

// issuedRestoreLocked is the same for restores.
func (ss *session) issuedRestoreLocked(x uint32) bool {
	return x != 0 && x%2 == 0 && x < ss.nextRestore
}

func (ss *session) list(m *proto.ListRequest) error {
	sums, err := ss.srv.Store.List(ss.ctx, ss.client.ID, m.Prefix)
	if err != nil {
		ss.sendError(m.Req, storeErr(err))
		return nil
	}
	var n uint32
	emit := func(fv store.FileVersion, versions int) error {
		n++
		return ss.send(&proto.ListEntry{
			Req:      m.Req,
			Name:     fv.Name,
			Version:  uint32(fv.Version),
			Versions: uint32(versions),
			Size:     uint64(fv.Size),
			ModTime:  fv.ModTime.UnixNano(),
			Mode:     fv.Mode,
			CRC:      fv.CRC,
			SHA256:   fv.SHA256,
			StoredAt: fv.StoredAt.UnixNano(),
			Verified: fv.Verified,
			Damaged:  fv.Damaged,
			Kind:     proto.Kind(fv.Kind),
			Meta:     fv.Meta,
		})
	}
	for _, sum := range sums {
		if m.Flags&proto.ListAllVersions == 0 {
			if err := emit(sum.Latest, sum.Versions); err != nil {
				return err
			}
			continue
		}
		vs, err := ss.srv.Store.Versions(ss.ctx, ss.client.ID, sum.Latest.Name)
		if err != nil {
			ss.sendError(m.Req, storeErr(err))
			return nil
		}
		for _, fv := range vs {
			if err := emit(fv, len(vs)); err != nil {
				return err
			}
		}
	}
	return ss.send(&proto.ListEnd{Req: m.Req, Count: n})
}

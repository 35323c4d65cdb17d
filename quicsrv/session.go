package quicsrv

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/store"
	"github.com/quic-go/quic-go"
)

// session is one client connection: the control stream, the data streams
// it opens, and the transfers under way.
type session struct {
	srv    *Server
	conn   *quic.Conn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the session starts

	ctrl *quic.Stream
	wmu  sync.Mutex
	wbuf []byte

	client store.Client
	opener *proto.Opener
	sealer *proto.Sealer

	mu       sync.Mutex
	uploads  map[uint32]*upload
	restores map[uint32]*restore
	nextXfer uint32 // transfer numbers below this were issued
	sender   *proto.ChunkSender
	draining bool
}

func newSession(srv *Server, conn *quic.Conn, log *slog.Logger) *session {
	ctx, cancel := context.WithCancel(conn.Context())
	return &session{
		srv:      srv,
		conn:     conn,
		log:      log,
		ctx:      ctx,
		cancel:   cancel,
		uploads:  make(map[uint32]*upload),
		restores: make(map[uint32]*restore),
		nextXfer: 1,
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
	ss.log.Warn("closing connection", "code", code.String(), "err", err)
	ss.closeWith(code, errorText(err))
}

// errorText is the message sent to the peer: the error without the Go
// package prefixes, capped in length.
func errorText(err error) string {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe.Message
	}
	s := err.Error()
	if len(s) > proto.MaxMessageLen {
		s = s[:proto.MaxMessageLen]
	}
	return s
}

func (ss *session) run() {
	defer ss.cleanup()
	if err := ss.handshake(); err != nil {
		ss.fail(err)
		return
	}
	ss.log = ss.log.With("client", ss.client.Name, "id", ss.client.ID.String())
	ss.log.Info("session started")
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		ss.acceptData()
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
	ss.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "")
	ss.wg.Wait()
	ss.mu.Lock()
	ups := ss.uploads
	rests := ss.restores
	ss.uploads, ss.restores = nil, nil
	sender := ss.sender
	ss.mu.Unlock()
	for _, u := range ups {
		u.discard(context.Background())
	}
	for _, r := range rests {
		r.close()
	}
	if sender != nil {
		sender.Close()
	}
}

// drain asks the session to end once its transfers are done.
func (ss *session) drain() {
	ss.mu.Lock()
	ss.draining = true
	idle := len(ss.uploads) == 0 && len(ss.restores) == 0
	ss.mu.Unlock()
	if idle {
		ss.closeWith(proto.CodeShutdown, "server shutting down")
	}
}

// transferEnded closes a draining session whose last transfer ended.
func (ss *session) transferEnded() {
	ss.mu.Lock()
	idle := ss.draining && len(ss.uploads) == 0 && len(ss.restores) == 0
	ss.mu.Unlock()
	if idle {
		ss.closeWith(proto.CodeShutdown, "server shutting down")
	}
}

// handshake accepts the control stream, authenticates the client and sends
// Welcome with a fresh session key.
func (ss *session) handshake() error {
	deadline := time.Now().Add(ss.srv.handshakeTimeout())
	ctx, cancel := context.WithDeadline(ss.ctx, deadline)
	defer cancel()
	ctrl, err := ss.conn.AcceptStream(ctx)
	if err != nil {
		return fmt.Errorf("waiting for the control stream: %w", err)
	}
	ss.ctrl = ctrl
	ctrl.SetReadDeadline(deadline)
	m, err := proto.NewMessageReader(ctrl).Read()
	if err != nil {
		return err
	}
	ctrl.SetReadDeadline(time.Time{})

	ekm, err := ss.exporter()
	if err != nil {
		return err
	}
	var pub *rsa.PublicKey
	switch m := m.(type) {
	case *proto.Register:
		if m.Version != proto.Version {
			return proto.Errorf(proto.CodeVersion, "protocol version %d is not supported; this server speaks %d", m.Version, proto.Version)
		}
		if pub, err = proto.ParsePublicKey(m.PublicKey); err != nil {
			return err
		}
		if err := proto.VerifyProof(pub, proto.RegisterDigest(ekm, m.Name, m.PublicKey), m.Signature); err != nil {
			return err
		}
		c, created, err := ss.srv.Store.RegisterClient(ss.ctx, m.Name, m.PublicKey)
		switch {
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
		if m.Version != proto.Version {
			return proto.Errorf(proto.CodeVersion, "protocol version %d is not supported; this server speaks %d", m.Version, proto.Version)
		}
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

	key, err := proto.NewSessionKey()
	if err != nil {
		return err
	}
	defer clear(key[:])
	wrapped, err := proto.WrapKey(pub, &key)
	if err != nil {
		return fmt.Errorf("wrapping the session key: %w", err)
	}
	if ss.opener, err = proto.NewOpener(&key, proto.ClientToServer); err != nil {
		return err
	}
	if ss.sealer, err = proto.NewSealer(&key, proto.ServerToClient); err != nil {
		return err
	}
	return ss.send(&proto.Welcome{
		ClientID:   ss.client.ID,
		WrappedKey: wrapped,
		ChunkSize:  uint32(ss.srv.chunkSize()),
		Streams:    uint16(ss.srv.streams()),
	})
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
	ss.wbuf = proto.AppendMessage(ss.wbuf[:0], m)
	_, err := ss.ctrl.Write(ss.wbuf)
	return err
}

// sendError reports the failure of request req.
func (ss *session) sendError(req uint32, err error) {
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
		switch m := m.(type) {
		case *proto.UploadRequest:
			ss.uploadRequest(m)
		case *proto.UploadCommit:
			err = ss.uploadCommit(m.Xfer)
		case *proto.UploadAbort:
			err = ss.uploadAbort(m.Xfer)
		case *proto.ListRequest:
			err = ss.list(m)
		case *proto.RestoreRequest:
			ss.restoreRequest(m)
		case *proto.RestoreDone:
			ss.restoreDone(m)
		default:
			err = proto.Errorf(proto.CodeProtocol, "unexpected %v after the handshake", m.Type())
		}
		if err != nil {
			return err
		}
	}
}

// storeErr maps a store error to a protocol error.
func storeErr(err error) error {
	switch {
	case errors.Is(err, store.ErrInvalidName):
		return proto.Errorf(proto.CodeInvalidName, "%v", err)
	case errors.Is(err, store.ErrNotFound):
		return proto.Errorf(proto.CodeNotFound, "no such file or version")
	case errors.Is(err, store.ErrNoSpace):
		return proto.Errorf(proto.CodeNoSpace, "the server's disk is full")
	}
	return err
}

// newXfer reserves a transfer number; the caller holds ss.mu.
func (ss *session) newXferLocked() (uint32, error) {
	if ss.draining {
		return 0, proto.Errorf(proto.CodeShutdown, "the server is shutting down")
	}
	if len(ss.uploads)+len(ss.restores) >= ss.srv.maxTransfers() {
		return 0, proto.Errorf(proto.CodeLimit, "more than %d transfers open in one session", ss.srv.maxTransfers())
	}
	x := ss.nextXfer
	ss.nextXfer++
	return x, nil
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

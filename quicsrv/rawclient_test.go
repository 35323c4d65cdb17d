package quicsrv_test

// A hand-made client that speaks the qbackup protocol directly over quic-go,
// without package quiccli, so tests can send exactly the bytes they want:
// well-formed sessions, and every kind of malformed or hostile input.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// ioTimeout bounds every wait for the server. Nothing in these tests should
// take more than a fraction of it on loopback.
const ioTimeout = 10 * time.Second

// RSA key generation is slow, the race detector makes it slower: two
// 2048-bit keys serve the whole test binary.
var (
	keysOnce   sync.Once
	keyA, keyB *rsa.PrivateKey
	keysErr    error
)

func testKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		var wg sync.WaitGroup
		var errA, errB error
		wg.Go(func() { keyA, errA = rsa.GenerateKey(rand.Reader, 2048) })
		wg.Go(func() { keyB, errB = rsa.GenerateKey(rand.Reader, 2048) })
		wg.Wait()
		keysErr = errors.Join(errA, errB)
	})
	if keysErr != nil {
		t.Fatalf("generating RSA keys: %v", keysErr)
	}
	return keyA, keyB
}

func pubDER(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatalf("marshal public key: %v", err)
	}
	return der
}

func clientQUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:  5 * time.Second,
		MaxIdleTimeout:        30 * time.Second,
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: 64,
	}
}

// dialConn makes a QUIC connection to srv offering the given ALPN.
func dialConn(t testing.TB, srv *srvtest.Server, alpn string) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	return quic.DialAddr(ctx, srv.Addr, certs.ClientConfig(srv.Fingerprint, nil, alpn), clientQUICConfig())
}

func dialConnCtx(ctx context.Context, srv *srvtest.Server) (*quic.Conn, error) {
	return quic.DialAddr(ctx, srv.Addr, certs.ClientConfig(srv.Fingerprint, nil, proto.ALPN), clientQUICConfig())
}

// rawClient is one connection with its control stream.
type rawClient struct {
	t    testing.TB
	srv  *srvtest.Server
	conn *quic.Conn
	ctrl *quic.Stream
	mr   *proto.MessageReader
	ekm  []byte

	// Set by a successful handshake.
	key     *rsa.PrivateKey
	id      [16]byte
	skey    proto.SessionKey
	welcome *proto.Welcome
	sealer  *proto.Sealer // ClientToServer
	opener  *proto.Opener // ServerToClient

	req uint32

	dataOnce sync.Once
	frames   chan rawFrame   // chunks the server sends, from every data stream
	released map[uint32]bool // restores given up: their late chunks are dropped
}

// rawFrame is one chunk frame received from the server.
type rawFrame struct {
	h   proto.ChunkHeader
	ct  []byte
	err error
}

// dialRaw connects and opens the control stream; nothing is sent yet.
func dialRaw(t testing.TB, srv *srvtest.Server) *rawClient {
	t.Helper()
	conn, err := dialConn(t, srv, proto.ALPN)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := &rawClient{t: t, srv: srv, conn: conn}
	t.Cleanup(c.close)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if c.ctrl, err = conn.OpenStreamSync(ctx); err != nil {
		t.Fatalf("open control stream: %v", err)
	}
	c.mr = proto.NewMessageReader(c.ctrl)
	cs := conn.ConnectionState().TLS
	if c.ekm, err = cs.ExportKeyingMaterial(proto.ExporterLabel, nil, proto.ExporterLen); err != nil {
		t.Fatalf("exporter: %v", err)
	}
	return c
}

func (c *rawClient) close() {
	c.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "")
}

// write sends raw bytes on the control stream.
func (c *rawClient) write(b []byte) {
	c.t.Helper()
	c.ctrl.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.ctrl.Write(b); err != nil {
		c.t.Fatalf("write on the control stream: %v", err)
	}
}

// send sends control messages.
func (c *rawClient) send(ms ...proto.Message) {
	c.t.Helper()
	var b []byte
	for _, m := range ms {
		b = proto.AppendMessage(b, m)
	}
	c.write(b)
}

// read reads the next control message.
func (c *rawClient) read() (proto.Message, error) {
	c.ctrl.SetReadDeadline(time.Now().Add(ioTimeout))
	return c.mr.Read()
}

// expect reads the next message and requires it to be a T.
func expect[T proto.Message](c *rawClient) T {
	c.t.Helper()
	m, err := c.read()
	if err != nil {
		c.t.Fatalf("reading a %T: %v", *new(T), err)
	}
	v, ok := m.(T)
	if !ok {
		if em, ok := m.(*proto.ErrorMessage); ok {
			c.t.Fatalf("want %T, got Error req %d: %v", *new(T), em.Req, em.Err())
		}
		c.t.Fatalf("want %T, got %v %+v", *new(T), m.Type(), m)
	}
	return v
}

// expectAny reads the next message, whatever it is.
func expectAny(c *rawClient) proto.Message {
	c.t.Helper()
	m, err := c.read()
	if err != nil {
		c.t.Fatalf("reading a message: %v", err)
	}
	return m
}

// expectError reads the next message and requires it to be an Error with
// the given request number and code and a message.
func (c *rawClient) expectError(req uint32, code proto.ErrorCode) *proto.ErrorMessage {
	c.t.Helper()
	em := expect[*proto.ErrorMessage](c)
	if em.Req != req || em.Code != code {
		c.t.Fatalf("Error req %d code %v (%q); want req %d code %v", em.Req, em.Code, em.Message, req, code)
	}
	if em.Message == "" {
		c.t.Errorf("Error req %d code %v carries no message", em.Req, em.Code)
	}
	return em
}

// closeErr waits for the connection to end and returns why.
func (c *rawClient) closeErr(within time.Duration) error {
	c.t.Helper()
	select {
	case <-c.conn.Context().Done():
		return context.Cause(c.conn.Context())
	case <-time.After(within):
		c.t.Fatalf("the connection is still open after %v", within)
		return nil
	}
}

// expectClosed requires the server to close the connection with code, and
// with a message saying why.
func (c *rawClient) expectClosed(code proto.ErrorCode) *quic.ApplicationError {
	c.t.Helper()
	return expectConnClosed(c.t, c.conn, code)
}

func expectConnClosed(t testing.TB, conn *quic.Conn, code proto.ErrorCode) *quic.ApplicationError {
	t.Helper()
	var err error
	select {
	case <-conn.Context().Done():
		err = context.Cause(conn.Context())
	case <-time.After(ioTimeout):
		t.Fatalf("the connection is still open after %v; want it closed with %v", ioTimeout, code)
	}
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) {
		t.Fatalf("connection ended with %T %v; want an application close with %v", err, err, code)
	}
	if !ae.Remote {
		t.Fatalf("connection closed locally (%v); want the server to close it with %v", ae, code)
	}
	if proto.ErrorCode(ae.ErrorCode) != code {
		t.Fatalf("server closed the connection with %v (%q); want %v", proto.ErrorCode(ae.ErrorCode), ae.ErrorMessage, code)
	}
	if code != proto.CodeNoError && ae.ErrorMessage == "" {
		t.Errorf("server closed the connection with %v but no message", code)
	}
	if len(ae.ErrorMessage) > proto.MaxMessageLen || !utf8.ValidString(ae.ErrorMessage) {
		t.Errorf("close reason of %d bytes (valid UTF-8: %v); want at most %d bytes of UTF-8",
			len(ae.ErrorMessage), utf8.ValidString(ae.ErrorMessage), proto.MaxMessageLen)
	}
	t.Logf("closed as expected: %v: %s", proto.ErrorCode(ae.ErrorCode), ae.ErrorMessage)
	return ae
}

// expectShutdownEnd requires the server to end a draining session
// gracefully, after every answer: either it closes the connection with
// CodeShutdown, or it finishes the control stream (a clean EOF), after
// which the client closes the connection.
func (c *rawClient) expectShutdownEnd() {
	c.t.Helper()
	m, err := c.read()
	switch {
	case err == nil:
		c.t.Fatalf("unexpected %v %+v while waiting for the session to end", m.Type(), m)
	case err == io.EOF:
		c.t.Log("the server finished the control stream")
		c.close()
		return
	}
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote || proto.ErrorCode(ae.ErrorCode) != proto.CodeShutdown {
		c.t.Fatalf("session ended with %v; want a close with %v or the end of the control stream", err, proto.CodeShutdown)
	}
	c.t.Logf("closed as expected: %v: %s", proto.ErrorCode(ae.ErrorCode), ae.ErrorMessage)
}

// registerMsg builds a Register signed over this connection's exporter.
func (c *rawClient) registerMsg(name string, key *rsa.PrivateKey) *proto.Register {
	c.t.Helper()
	pub := pubDER(c.t, &key.PublicKey)
	sig, err := proto.SignProof(key, proto.RegisterDigest(c.ekm, name, pub))
	if err != nil {
		c.t.Fatalf("sign: %v", err)
	}
	return &proto.Register{Version: proto.Version, Name: name, PublicKey: pub, Signature: sig}
}

func (c *rawClient) reconnectMsg(id [16]byte, key *rsa.PrivateKey) *proto.Reconnect {
	c.t.Helper()
	sig, err := proto.SignProof(key, proto.ReconnectDigest(c.ekm, id))
	if err != nil {
		c.t.Fatalf("sign: %v", err)
	}
	return &proto.Reconnect{Version: proto.Version, ClientID: id, Signature: sig}
}

// welcomed reads Welcome and sets up the session crypto.
func (c *rawClient) welcomed(key *rsa.PrivateKey) *proto.Welcome {
	c.t.Helper()
	w := expect[*proto.Welcome](c)
	k, err := proto.UnwrapKey(key, w.WrappedKey)
	if err != nil {
		c.t.Fatalf("unwrap the session key: %v", err)
	}
	if w.ChunkSize == 0 || w.ChunkSize > proto.MaxChunkSize || w.Streams == 0 {
		c.t.Fatalf("Welcome with chunk size %d, streams %d", w.ChunkSize, w.Streams)
	}
	c.key, c.id, c.skey, c.welcome = key, w.ClientID, k, w
	if c.sealer, err = proto.NewSealer(&k, proto.ClientToServer); err != nil {
		c.t.Fatal(err)
	}
	if c.opener, err = proto.NewOpener(&k, proto.ServerToClient); err != nil {
		c.t.Fatal(err)
	}
	return w
}

func (c *rawClient) register(name string, key *rsa.PrivateKey) *proto.Welcome {
	c.t.Helper()
	c.send(c.registerMsg(name, key))
	return c.welcomed(key)
}

func (c *rawClient) reconnect(id [16]byte, key *rsa.PrivateKey) *proto.Welcome {
	c.t.Helper()
	c.send(c.reconnectMsg(id, key))
	w := c.welcomed(key)
	if w.ClientID != id {
		c.t.Fatalf("Welcome for %x after Reconnect as %x", w.ClientID, id)
	}
	return w
}

// registered dials and registers.
func registered(t testing.TB, srv *srvtest.Server, name string, key *rsa.PrivateKey) *rawClient {
	t.Helper()
	c := dialRaw(t, srv)
	c.register(name, key)
	return c
}

func (c *rawClient) nextReq() uint32 {
	c.req++
	return c.req
}

// openData opens a data stream and writes its type byte.
func (c *rawClient) openData() *quic.SendStream {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s, err := c.conn.OpenUniStreamSync(ctx)
	if err != nil {
		c.t.Fatalf("open a data stream: %v", err)
	}
	s.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := s.Write([]byte{proto.StreamTypeChunks}); err != nil {
		c.t.Fatalf("write the stream type: %v", err)
	}
	return s
}

// sendData writes frames on a new data stream and closes it.
func (c *rawClient) sendData(frames ...[]byte) {
	c.t.Helper()
	s := c.openData()
	if _, err := s.Write(bytes.Join(frames, nil)); err != nil {
		c.t.Fatalf("write chunks: %v", err)
	}
	if err := s.Close(); err != nil {
		c.t.Fatalf("close data stream: %v", err)
	}
}

// sendStream opens a data stream, writes b and closes it. Write errors
// are ignored: a hostile test expects the server to close the connection,
// perhaps before everything is written.
func (c *rawClient) sendStream(b ...[]byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	s, err := c.conn.OpenUniStreamSync(ctx)
	if err != nil {
		c.t.Fatalf("open a data stream: %v", err)
	}
	s.SetWriteDeadline(time.Now().Add(ioTimeout))
	s.Write(bytes.Join(b, nil))
	s.Close()
}

// frame seals one chunk with the session key.
func (c *rawClient) frame(xfer uint32, id [16]byte, off uint64, p []byte) []byte {
	c.t.Helper()
	return sealFrame(c.t, c.sealer, xfer, id, off, p)
}

func sealFrame(t testing.TB, s *proto.Sealer, xfer uint32, id [16]byte, off uint64, p []byte) []byte {
	t.Helper()
	f, err := s.AppendFrame(nil, xfer, &id, off, p)
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	return f
}

// chunkFrames seals data as chunks of at most n bytes.
func (c *rawClient) chunkFrames(xfer uint32, id [16]byte, data []byte, n int) [][]byte {
	c.t.Helper()
	var out [][]byte
	for off := 0; off < len(data); off += n {
		out = append(out, c.frame(xfer, id, uint64(off), data[off:min(off+n, len(data))]))
	}
	return out
}

// uploadReq builds an UploadRequest for data.
func (c *rawClient) uploadReq(name string, data []byte) *proto.UploadRequest {
	return &proto.UploadRequest{
		Req:     c.nextReq(),
		Name:    name,
		Size:    uint64(len(data)),
		ModTime: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano(),
		Mode:    0o640,
		Flags:   proto.FlagHashed,
		CRC:     proto.CksumBytes(data),
		SHA256:  sha256.Sum256(data),
	}
}

// startUpload sends an UploadRequest and requires UploadReady asking for
// the whole file.
func (c *rawClient) startUpload(name string, data []byte) *proto.UploadReady {
	c.t.Helper()
	m := c.uploadReq(name, data)
	c.send(m)
	r := expect[*proto.UploadReady](c)
	if r.Req != m.Req || r.Status != proto.ReadySend || r.Xfer == 0 {
		c.t.Fatalf("UploadReady %+v for req %d", r, m.Req)
	}
	want := []proto.Range{{Off: 0, Len: uint64(len(data))}}
	if len(data) == 0 {
		want = nil
	}
	if !slices.Equal(r.Missing, want) {
		c.t.Fatalf("UploadReady asks for %v, want %v", r.Missing, want)
	}
	return r
}

// finishUpload waits for the checksum, checks it against data, commits
// and returns the result.
func (c *rawClient) finishUpload(xfer uint32, data []byte) *proto.UploadResult {
	c.t.Helper()
	ck := expect[*proto.UploadChecksum](c)
	if ck.Xfer != xfer || ck.CRC != proto.CksumBytes(data) || ck.SHA256 != sha256.Sum256(data) {
		c.t.Fatalf("UploadChecksum %+v does not match the data sent on transfer %d", ck, xfer)
	}
	c.send(&proto.UploadCommit{Xfer: xfer})
	res := expect[*proto.UploadResult](c)
	if res.Xfer != xfer {
		c.t.Fatalf("UploadResult for transfer %d, want %d", res.Xfer, xfer)
	}
	return res
}

// upload stores data under name the way a well-behaved client does:
// request, chunks on one data stream, checksum, commit, result.
func (c *rawClient) upload(name string, data []byte) *proto.UploadResult {
	c.t.Helper()
	r := c.startUpload(name, data)
	if len(data) > 0 {
		c.sendData(c.chunkFrames(r.Xfer, r.UploadID, data, int(c.welcome.ChunkSize))...)
	}
	res := c.finishUpload(r.Xfer, data)
	if res.Status != proto.ResultStored || res.Version == 0 {
		c.t.Fatalf("upload of %q: result %+v, want stored", name, res)
	}
	return res
}

// list returns the entries of a listing.
func (c *rawClient) list(prefix string, flags uint8) []*proto.ListEntry {
	c.t.Helper()
	req := c.nextReq()
	c.send(&proto.ListRequest{Req: req, Prefix: prefix, Flags: flags})
	var out []*proto.ListEntry
	for {
		m, err := c.read()
		if err != nil {
			c.t.Fatalf("reading the listing: %v", err)
		}
		switch m := m.(type) {
		case *proto.ListEntry:
			if m.Req != req {
				c.t.Fatalf("ListEntry for req %d, want %d", m.Req, req)
			}
			out = append(out, m)
		case *proto.ListEnd:
			if m.Req != req || int(m.Count) != len(out) {
				c.t.Fatalf("ListEnd %+v after %d entries for req %d", m, len(out), req)
			}
			return out
		case *proto.ErrorMessage:
			c.t.Fatalf("listing %q: %v", prefix, m.Err())
		default:
			c.t.Fatalf("unexpected %v during a listing", m.Type())
		}
	}
}

// acceptData starts reading the data streams the server opens. Frames,
// and any error reading them, arrive on c.frames.
func (c *rawClient) acceptData() {
	c.dataOnce.Do(func() {
		c.frames = make(chan rawFrame, 1024)
		ctx := c.conn.Context()
		deliver := func(f rawFrame) bool {
			select {
			case c.frames <- f:
				return true
			case <-ctx.Done():
				return false
			}
		}
		go func() {
			for {
				rs, err := c.conn.AcceptUniStream(ctx)
				if err != nil {
					return
				}
				go func() {
					var typ [1]byte
					if _, err := io.ReadFull(rs, typ[:]); err != nil {
						return
					}
					if typ[0] != proto.StreamTypeChunks {
						deliver(rawFrame{err: fmt.Errorf("server opened a data stream of type %#x", typ[0])})
						return
					}
					cr := proto.NewChunkReader(rs, c.welcome.ChunkSize)
					for {
						h, ct, err := cr.Next()
						if err == io.EOF || ctx.Err() != nil {
							return
						}
						if err != nil {
							deliver(rawFrame{err: fmt.Errorf("reading a server data stream: %w", err)})
							return
						}
						if !deliver(rawFrame{h: h, ct: bytes.Clone(ct)}) {
							return
						}
					}
				}()
			}
		}()
	})
}

// giveUp releases a restore the client does not want to finish.
func (c *rawClient) giveUp(xfer uint32) {
	c.t.Helper()
	if c.released == nil {
		c.released = make(map[uint32]bool)
	}
	c.released[xfer] = true
	c.send(&proto.RestoreDone{Xfer: xfer, Status: 1})
}

// restore requests a stored file, checks RestoreReady against want (the
// fields Req, Xfer and TransferID are checked here), reassembles and
// decrypts the chunks, checks them against the CRC and SHA-256 in
// RestoreReady, and sends RestoreDone.
func (c *rawClient) restore(name string, version uint32) (*proto.RestoreReady, []byte) {
	c.t.Helper()
	c.acceptData()
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: name, Version: version})
	return c.receiveRestore(req, name, nil, nil)
}

// resume asks with a RestoreResume for the bytes of version outside have,
// and checks them like restore, with the bytes of have taken from want. It
// returns the whole file.
func (c *rawClient) resume(name string, version uint32, sha [32]byte, want []byte, have []proto.Range) (*proto.RestoreReady, []byte) {
	c.t.Helper()
	c.acceptData()
	req := c.nextReq()
	c.send(&proto.RestoreResume{Req: req, Name: name, Version: version, SHA256: sha, Have: have})
	return c.receiveRestore(req, name, want, have)
}

// receiveRestore reads the RestoreReady for req and the chunks outside
// have, whose bytes it takes from want, checks the whole file against the
// checksums of RestoreReady and sends RestoreDone.
func (c *rawClient) receiveRestore(req uint32, name string, want []byte, have []proto.Range) (*proto.RestoreReady, []byte) {
	c.t.Helper()
	rr, buf := c.fetchRestore(req, name, want, have)
	if crc := proto.CksumBytes(buf); crc != rr.CRC {
		c.t.Fatalf("restored %q: cksum %d, RestoreReady says %d", name, crc, rr.CRC)
	}
	if sha256.Sum256(buf) != rr.SHA256 {
		c.t.Fatalf("restored %q: SHA-256 differs from RestoreReady's", name)
	}
	c.send(&proto.RestoreDone{Xfer: rr.Xfer, Status: 0})
	return rr, buf
}

// fetchRestore reads the RestoreReady for req and the chunks outside
// have, whose bytes it takes from want, and returns the file, unchecked;
// the restore is still open.
func (c *rawClient) fetchRestore(req uint32, name string, want []byte, have []proto.Range) (*proto.RestoreReady, []byte) {
	c.t.Helper()
	rr := expect[*proto.RestoreReady](c)
	if rr.Req != req || rr.Xfer == 0 || rr.TransferID == ([16]byte{}) {
		c.t.Fatalf("RestoreReady %+v for req %d", rr, req)
	}
	buf := make([]byte, rr.Size)
	var got proto.RangeSet
	for _, r := range have {
		copy(buf[r.Off:r.Off+r.Len], want[r.Off:])
		got.Add(r.Off, r.Len)
	}
	timeout := time.After(ioTimeout)
	for !got.Covers(rr.Size) {
		var f rawFrame
		select {
		case f = <-c.frames:
		case <-timeout:
			c.t.Fatalf("restore of %q: have %d of %d bytes after %v", name, got.Total(), rr.Size, ioTimeout)
		}
		if f.err != nil {
			c.t.Fatalf("restore of %q: %v", name, f.err)
		}
		if c.released[f.h.Xfer] {
			continue
		}
		if f.h.Xfer != rr.Xfer {
			c.t.Fatalf("chunk for transfer %d during the restore of transfer %d", f.h.Xfer, rr.Xfer)
		}
		p, err := c.opener.Open(nil, &f.h, &rr.TransferID, f.ct)
		if err != nil {
			c.t.Fatalf("restore chunk [%d,+%d): %v", f.h.Offset, f.h.Length, err)
		}
		if f.h.Offset+uint64(len(p)) > rr.Size {
			c.t.Fatalf("restore chunk [%d,+%d) beyond the %d-byte size", f.h.Offset, len(p), rr.Size)
		}
		if err := got.Add(f.h.Offset, uint64(len(p))); err != nil {
			c.t.Fatalf("restore chunk (resumed with %v): %v", have, err)
		}
		copy(buf[f.h.Offset:], p)
	}
	return rr, buf
}

// world tracks what the tests stored on a server, so each hostile case can
// check that the server kept serving, and that nothing was lost or changed.
// A well-behaved client named "good" (key A) stores files; hostile cases
// act as "mallory" (key B) unless they need otherwise.
type world struct {
	srv   *srvtest.Server
	key   *rsa.PrivateKey // good's key
	bad   *rsa.PrivateKey // mallory's key
	id    [16]byte        // good's client ID
	files map[string][]byte
	n     int
}

const goodName, badName = "good", "mallory"

func newWorld(t *testing.T, configure func(*quicsrv.Server)) *world {
	t.Helper()
	a, b := testKeys(t)
	w := &world{srv: srvtest.Start(t, configure), key: a, bad: b, files: make(map[string][]byte)}
	w.healthy(t)
	return w
}

// mallory returns a new connection registered as the hostile client.
func (w *world) mallory(t *testing.T) *rawClient {
	t.Helper()
	return registered(t, w.srv, badName, w.bad)
}

// randBytes returns n random bytes.
func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// healthy checks that a fresh well-behaved client can still register,
// upload, list and restore, and records the file it stored.
func (w *world) healthy(t testing.TB) {
	t.Helper()
	c := registered(t, w.srv, goodName, w.key)
	if w.id == ([16]byte{}) {
		w.id = c.id
	} else if c.id != w.id {
		t.Fatalf("registering again gave ID %x, first time %x", c.id, w.id)
	}
	w.n++
	name := fmt.Sprintf("docs/file-%03d.bin", w.n)
	data := randBytes(1000 + 997*w.n%5000)
	res := c.upload(name, data)
	if res.Version != 1 {
		t.Fatalf("first upload of %q stored as version %d", name, res.Version)
	}
	w.files[name] = data
	entries := c.list("docs", 0)
	if len(entries) != len(w.files) {
		t.Fatalf("listing has %d entries, want %d", len(entries), len(w.files))
	}
	for _, e := range entries {
		d, ok := w.files[e.Name]
		if !ok || e.Size != uint64(len(d)) || e.CRC != proto.CksumBytes(d) || e.SHA256 != sha256.Sum256(d) || !e.Verified {
			t.Fatalf("listing entry %+v does not describe what was stored", e)
		}
	}
	_, got := c.restore(name, 0)
	if !bytes.Equal(got, data) {
		t.Fatalf("restore of %q returned different bytes", name)
	}
	c.close()
}

// restoreAll restores every file stored through healthy and compares it,
// then checks that nothing was written outside the data directory.
func (w *world) restoreAll(t testing.TB) {
	t.Helper()
	c := dialRaw(t, w.srv)
	c.reconnect(w.id, w.key)
	names := make([]string, 0, len(w.files))
	for n := range w.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rr, got := c.restore(n, 0)
		if rr.Name != n || rr.Version != 1 || !bytes.Equal(got, w.files[n]) {
			t.Fatalf("restore of %q: %+v, bytes equal %v", n, rr, bytes.Equal(got, w.files[n]))
		}
	}
	c.close()
	tmpEmpty(t, w.srv)
	checkContained(t, w.srv.Dir)
}

// snapshot maps every path under the data directory's clients/ and tmp/
// to its content hash ("dir" for directories).
func (w *world) snapshot(t *testing.T) map[string]string {
	return snapshotDir(t, w.srv.Dir)
}

func snapshotDir(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for _, sub := range []string{"clients", "tmp"} {
		root := filepath.Join(dir, sub)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil // removed while walking
				}
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if d.IsDir() {
				out[rel] = "dir"
				return nil
			}
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
			return nil
		})
		if err != nil {
			t.Fatalf("walking %s: %v", root, err)
		}
	}
	return out
}

// tmpEmpty waits until no session is receiving an upload (uploads of a
// closed session are discarded, or kept for resume if they received
// something), expires the kept ones as the partial-upload time to live
// would, and then requires tmp/ to be empty: nothing else may linger.
func tmpEmpty(t testing.TB, srv *srvtest.Server) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for quicsrv.ActiveUploads(srv.Srv) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d uploads still active after %v", quicsrv.ActiveUploads(srv.Srv), ioTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := srv.Store.PurgeUploads(context.Background(), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("purging partial uploads: %v", err)
	}
	for {
		entries, err := os.ReadDir(filepath.Join(srv.Dir, "tmp"))
		if err != nil {
			t.Fatalf("reading tmp: %v", err)
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("tmp/ still holds %v after %v", names, ioTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// unchanged waits for the server to drop the temp files of a finished
// hostile case, then requires clients/ and tmp/ to be as in before.
func (w *world) unchanged(t *testing.T, before map[string]string) {
	t.Helper()
	tmpEmpty(t, w.srv)
	after := w.snapshot(t)
	for p, h := range before {
		if after[p] != h {
			t.Errorf("%s changed: was %s, now %q", p, h, after[p])
		}
	}
	for p, h := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s (%s) appeared", p, h)
		}
	}
}

// kept checks that every file of the snapshot before is still there,
// unchanged (files added since are the test's own business).
func (w *world) kept(t *testing.T, before map[string]string) {
	t.Helper()
	after := w.snapshot(t)
	for p, h := range before {
		if after[p] != h {
			t.Errorf("%s changed", p)
		}
	}
}

// checkContained checks that the server wrote nothing outside its data
// directory, and only the expected entries inside it.
func checkContained(t testing.TB, dir string) {
	t.Helper()
	parent := filepath.Dir(dir)
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != filepath.Base(dir) {
			t.Errorf("%s appeared next to the data directory", filepath.Join(parent, e.Name()))
		}
	}
	entries, err = os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch n := e.Name(); {
		case n == "clients", n == "tmp", n == "tls", strings.HasPrefix(n, "qbackup."):
		default:
			t.Errorf("unexpected %s in the data directory", n)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ holds %d entries at the end", len(entries))
	}
}

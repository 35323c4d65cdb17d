package quicsrv_test

// Hostile and malformed input against a real server, through the raw
// client: each case checks the exact error the server answers with, that
// no stored file changed and no temporary file is left, and that a
// well-behaved client is still served afterwards.

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/certs"
	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
)

// hostileCase is one misbehaviour that the server must answer by closing
// the connection with code.
type hostileCase struct {
	name string
	code proto.ErrorCode
	// run misbehaves and returns the connection the server must close.
	run func(t *testing.T, w *world) *rawClient
}

func runHostile(t *testing.T, w *world, cases []hostileCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := w.snapshot(t)
			c := tc.run(t, w)
			c.expectClosed(tc.code)
			w.unchanged(t, before)
			w.healthy(t)
		})
	}
}

// frameHeader is a control frame header: type and payload length.
func frameHeader(typ proto.MsgType, n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{byte(typ)}, n)
}

// withTrailingByte re-frames m with one extra payload byte.
func withTrailingByte(m proto.Message) []byte {
	b := proto.AppendMessage(nil, m)
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-5))
	return b
}

// seededBytes returns n deterministic pseudo-random bytes.
func seededBytes(seed byte, n int) []byte {
	var s [32]byte
	s[0] = seed
	b := make([]byte, n)
	mrand.NewChaCha8(s).Read(b)
	return b
}

// controlGarbage is what a confused or hostile client may write on the
// control stream, before or after the handshake. Every one is a protocol
// violation.
func controlGarbage() []struct {
	name  string
	bytes func(c *rawClient) []byte
	fin   bool // close the stream after writing
} {
	return []struct {
		name  string
		bytes func(c *rawClient) []byte
		fin   bool
	}{
		{"random bytes", func(*rawClient) []byte {
			b := seededBytes(1, 512)
			b[1] = 0xff // a length far over the limit, whatever the type
			return b
		}, false},
		{"random bytes with a plausible header", func(*rawClient) []byte {
			return append(frameHeader(proto.TypeUploadRequest, 300), seededBytes(2, 300)...)
		}, false},
		{"truncated frame then FIN", func(c *rawClient) []byte {
			b := proto.AppendMessage(nil, &proto.ListRequest{Req: 7, Prefix: "some/prefix"})
			return b[:len(b)-3]
		}, true},
		{"partial frame header then FIN", func(*rawClient) []byte { return []byte{byte(proto.TypeListRequest), 0, 0} }, true},
		{"frame length just over 64 KiB", func(*rawClient) []byte {
			return append(frameHeader(proto.TypeUploadRequest, proto.MaxControlFrame+1), seededBytes(3, 100)...)
		}, false},
		{"frame length 4 GiB", func(*rawClient) []byte { return frameHeader(proto.TypeListRequest, 0xffffffff) }, false},
		{"unknown message type", func(*rawClient) []byte { return frameHeader(0x7f, 0) }, false},
		{"unknown message type with payload", func(*rawClient) []byte { return append(frameHeader(0x13, 4), 1, 2, 3, 4) }, false},
	}
}

func TestHandshakeHostile(t *testing.T) {
	w := newWorld(t, nil)
	var cases []hostileCase
	for _, g := range controlGarbage() {
		cases = append(cases, hostileCase{"first frame: " + g.name, proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			c.write(g.bytes(c))
			if g.fin {
				c.ctrl.Close()
			}
			return c
		}})
	}
	// A message that is well-formed but not allowed first.
	for _, m := range []proto.Message{
		&proto.ListRequest{Req: 1},
		&proto.UploadRequest{Req: 1, Name: "a", Size: 1},
		&proto.RestoreRequest{Req: 1, Name: "a"},
		&proto.RestoreResume{Req: 1, Name: "a", Version: 1},
		&proto.UploadCommit{Xfer: 1},
		&proto.RestoreDone{Xfer: 1},
		&proto.Welcome{ChunkSize: 1, WrappedKey: []byte{1}},
		&proto.ErrorMessage{Code: proto.CodeNoError},
		&proto.ListEnd{},
	} {
		cases = append(cases, hostileCase{"first message " + m.Type().String(), proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			c.send(m)
			return c
		}})
	}
	// sendRegister dials and sends a Register (made valid by mk's caller,
	// then spoiled by spoil).
	sendRegister := func(name string, key func(t *testing.T, w *world) *rsa.PrivateKey, spoil func(m *proto.Register)) func(t *testing.T, w *world) *rawClient {
		return func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			m := c.registerMsg(name, key(t, w))
			spoil(m)
			c.send(m)
			return c
		}
	}
	bad := func(_ *testing.T, w *world) *rsa.PrivateKey { return w.bad }
	cases = append(cases, []hostileCase{
		{"Register with trailing bytes", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			c.write(withTrailingByte(c.registerMsg(badName, w.bad)))
			return c
		}},
		{"Register with a 65-byte name", proto.CodeProtocol, sendRegister(strings.Repeat("n", 65), bad, func(*proto.Register) {})},
		{"Register with a name that is not UTF-8", proto.CodeProtocol, sendRegister("bad\xffname", bad, func(*proto.Register) {})},
		{"Register with version 1 (an older client)", proto.CodeVersion, sendRegister(badName, bad, func(m *proto.Register) { m.Version = 1 })},
		{"Register with the next version", proto.CodeVersion, sendRegister(badName, bad, func(m *proto.Register) { m.Version = proto.Version + 1 })},
		{"Register with version 0", proto.CodeVersion, sendRegister(badName, bad, func(m *proto.Register) { m.Version = 0 })},
		{"Register with a flipped signature bit", proto.CodeBadProof, sendRegister(badName, bad, func(m *proto.Register) { m.Signature[17] ^= 0x20 })},
		{"Register with no signature", proto.CodeBadProof, sendRegister(badName, bad, func(m *proto.Register) { m.Signature = nil })},
		{"Register signed for another name", proto.CodeBadProof, sendRegister("someone-else", bad, func(m *proto.Register) { m.Name = badName })},
		{"Register signed with another key", proto.CodeBadProof, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			m := c.registerMsg(badName, w.bad)
			m.PublicKey = pubDER(t, &w.key.PublicKey) // claims good's key
			c.send(m)
			return c
		}},
		{"Register replayed from another connection", proto.CodeBadProof, func(t *testing.T, w *world) *rawClient {
			a := dialRaw(t, w.srv)
			m := a.registerMsg(badName, w.bad) // signed over a's exporter
			b := dialRaw(t, w.srv)
			b.send(m)
			// The same message is good on the connection it was made for.
			a.send(m)
			a.welcomed(w.bad)
			a.close()
			return b
		}},
		{"Reconnect replayed from another connection", proto.CodeBadProof, func(t *testing.T, w *world) *rawClient {
			a := dialRaw(t, w.srv)
			m := a.reconnectMsg(w.id, w.key)
			b := dialRaw(t, w.srv)
			b.send(m)
			a.send(m)
			a.welcomed(w.key)
			a.close()
			return b
		}},
		{"Reconnect signed with another key", proto.CodeBadProof, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			c.send(c.reconnectMsg(w.id, w.bad)) // mallory claims to be good
			return c
		}},
		{"Reconnect with the next version", proto.CodeVersion, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			m := c.reconnectMsg(w.id, w.key)
			m.Version = proto.Version + 1
			c.send(m)
			return c
		}},
		{"Reconnect with an unknown client ID", proto.CodeUnknownClient, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			var id [16]byte
			rand.Read(id[:])
			c.send(c.reconnectMsg(id, w.bad))
			return c
		}},
		{"Register with an ECDSA key", proto.CodeBadKey, func(t *testing.T, w *world) *rawClient {
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			c := dialRaw(t, w.srv)
			pub := pubDER(t, &k.PublicKey)
			sig, err := ecdsa.SignASN1(rand.Reader, k, proto.RegisterDigest(c.ekm, badName, pub))
			if err != nil {
				t.Fatal(err)
			}
			c.send(&proto.Register{Version: proto.Version, Name: badName, PublicKey: pub, Signature: sig})
			return c
		}},
		{"Register with an Ed25519 key", proto.CodeBadKey, func(t *testing.T, w *world) *rawClient {
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			c := dialRaw(t, w.srv)
			der := pubDER(t, pub)
			sig := ed25519.Sign(priv, proto.RegisterDigest(c.ekm, badName, der))
			c.send(&proto.Register{Version: proto.Version, Name: badName, PublicKey: der, Signature: sig})
			return c
		}},
		{"Register with a 1024-bit RSA key", proto.CodeBadKey, func(t *testing.T, w *world) *rawClient {
			k, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Skipf("cannot make a 1024-bit key here: %v", err)
			}
			c := dialRaw(t, w.srv)
			c.send(c.registerMsg("small-key", k)) // correctly signed: only the size is wrong
			return c
		}},
		{"Register with a 9000-bit RSA modulus", proto.CodeBadKey, func(t *testing.T, w *world) *rawClient {
			n := new(big.Int).Lsh(big.NewInt(1), 8999)
			n.SetBit(n, 0, 1)
			c := dialRaw(t, w.srv)
			pub := pubDER(t, &rsa.PublicKey{N: n, E: 65537})
			c.send(&proto.Register{Version: proto.Version, Name: "huge-key", PublicKey: pub, Signature: make([]byte, 512)})
			return c
		}},
		{"Register with a key that does not parse", proto.CodeBadKey, sendRegister(badName, bad, func(m *proto.Register) { m.PublicKey = seededBytes(4, 300) })},
		{"Register with an empty key", proto.CodeBadKey, sendRegister(badName, bad, func(m *proto.Register) { m.PublicKey = nil })},
		{"Register a name taken by another key", proto.CodeNameTaken, func(t *testing.T, w *world) *rawClient {
			c := dialRaw(t, w.srv)
			c.send(c.registerMsg(goodName, w.bad)) // validly signed, but "good" belongs to key A
			return c
		}},
		{"Register with an invalid client name", proto.CodeInvalidName, sendRegister("a/b", bad, func(*proto.Register) {})},
		{"Register with an empty client name", proto.CodeInvalidName, sendRegister("", bad, func(*proto.Register) {})},
		{"Register twice", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(c.registerMsg(badName, w.bad))
			return c
		}},
		{"Reconnect after Register", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(c.reconnectMsg(c.id, w.bad))
			return c
		}},
	}...)
	runHostile(t, w, cases)
	w.restoreAll(t)
}

// TestHandshakeSilentStreamEnd: a client that opens the control stream and
// closes it without a byte is disconnected, and nothing else is affected.
func TestHandshakeSilentStreamEnd(t *testing.T) {
	w := newWorld(t, nil)
	before := w.snapshot(t)
	c := dialRaw(t, w.srv)
	c.ctrl.Close() // a bare FIN
	err := c.closeErr(ioTimeout)
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote {
		t.Fatalf("connection ended with %v; want the server to close it", err)
	}
	t.Logf("closed with %v: %q", proto.ErrorCode(ae.ErrorCode), ae.ErrorMessage)
	w.unchanged(t, before)
	w.healthy(t)
	w.restoreAll(t)
}

// TestHandshakeTimeout: a client that connects and then says nothing (or
// not enough) is disconnected after the handshake timeout.
func TestHandshakeTimeout(t *testing.T) {
	const timeout = time.Second
	w := newWorld(t, func(s *quicsrv.Server) { s.HandshakeTimeout = timeout })
	cases := []struct {
		name string
		send func(c *rawClient)
	}{
		{"nothing at all", func(c *rawClient) {}},
		{"part of a frame header", func(c *rawClient) { c.write([]byte{byte(proto.TypeRegister), 0}) }},
		{"part of a Register", func(c *rawClient) {
			b := proto.AppendMessage(nil, c.registerMsg(badName, w.bad))
			c.write(b[:len(b)/2])
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := w.snapshot(t)
			start := time.Now()
			c := dialRaw(t, w.srv)
			tc.send(c)
			err := c.closeErr(timeout + 5*time.Second)
			took := time.Since(start)
			var ae *quic.ApplicationError
			if !errors.As(err, &ae) || !ae.Remote {
				t.Fatalf("connection ended with %v; want the server to close it", err)
			}
			t.Logf("closed after %v with %v: %q", took.Round(time.Millisecond), proto.ErrorCode(ae.ErrorCode), ae.ErrorMessage)
			if code := proto.ErrorCode(ae.ErrorCode); code != proto.CodeProtocol {
				t.Errorf("closed with %v; want %v: the client, not the server, failed", code, proto.CodeProtocol)
			}
			if took < timeout/2 {
				t.Errorf("closed after %v, before the %v handshake timeout", took, timeout)
			}
			if ae.ErrorMessage == "" {
				t.Errorf("closed with %v and no message", proto.ErrorCode(ae.ErrorCode))
			}
			w.unchanged(t, before)
			w.healthy(t)
		})
	}
	// A client that is slow but within the timeout is served.
	t.Run("slow but in time", func(t *testing.T) {
		c := dialRaw(t, w.srv)
		b := proto.AppendMessage(nil, c.registerMsg(goodName, w.key))
		c.write(b[:10])
		time.Sleep(timeout / 10)
		c.write(b[10:])
		c.welcomed(w.key)
		c.list("", 0)
	})
	w.restoreAll(t)
}

// TestHandshakeEOFCode: a control stream that ends before the first
// message is the client's fault; the server should say so (CodeProtocol)
// rather than call it an internal error, which tells the client the server
// failed and the request may be retried.
func TestHandshakeEOFCode(t *testing.T) {
	w := newWorld(t, nil)
	c := dialRaw(t, w.srv)
	c.ctrl.Close()
	c.expectClosed(proto.CodeProtocol)
}

// TestWrongALPN: the TLS handshake fails for a client that does not speak
// qbackup/1, and the server keeps serving.
func TestWrongALPN(t *testing.T) {
	w := newWorld(t, nil)
	for _, alpn := range []string{"qbackup/2", "h3"} {
		t.Run(alpn, func(t *testing.T) {
			conn, err := dialConn(t, w.srv, alpn)
			if err == nil {
				conn.CloseWithError(0, "")
				t.Fatalf("handshake with ALPN %q succeeded", alpn)
			}
			var te *quic.TransportError
			if !errors.As(err, &te) || !te.ErrorCode.IsCryptoError() {
				t.Fatalf("dial with ALPN %q: %T %v; want a TLS (crypto) transport error", alpn, err, err)
			}
			t.Logf("refused: %v", err)
			w.healthy(t)
		})
	}
	t.Run("no ALPN", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		tlsConf := certs.ClientConfig(w.srv.Fingerprint, nil)
		conn, err := quic.DialAddr(ctx, w.srv.Addr, tlsConf, clientQUICConfig())
		if err == nil {
			conn.CloseWithError(0, "")
			t.Fatal("handshake without ALPN succeeded")
		}
		t.Logf("refused: %v", err)
		w.healthy(t)
	})
	w.restoreAll(t)
}

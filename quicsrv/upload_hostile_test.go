package quicsrv_test

// Hostile input after the handshake: control messages out of order or
// malformed, bad names, and chunks that are forged, replayed, misplaced or
// malformed.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
)

// smallChunks makes the server use 4 KiB chunks, so small files take
// several.
func smallChunks(s *quicsrv.Server) { s.ChunkSize = 4096 }

const hostileName = "hostile/f.bin"

// chunkHeader builds a chunk header by hand.
func chunkHeader(xfer uint32, off uint64, n uint32, dir proto.Direction, ctr uint64) []byte {
	h := proto.ChunkHeader{Xfer: xfer, Offset: off, Length: n}
	h.Nonce[0] = byte(dir)
	binary.BigEndian.PutUint64(h.Nonce[4:], ctr)
	return proto.AppendChunkHeader(nil, &h)
}

// openUpload registers mallory and starts an upload of size random bytes.
func openUpload(t *testing.T, w *world, size int) (*rawClient, *proto.UploadReady, []byte) {
	t.Helper()
	c := w.mallory(t)
	data := randBytes(size)
	return c, c.startUpload(hostileName, data), data
}

// chunk is shorthand for a hostile case that opens an upload of size bytes
// and sends what frames returns on one data stream.
func chunk(size int, frames func(t *testing.T, c *rawClient, r *proto.UploadReady, data []byte) [][]byte) func(t *testing.T, w *world) *rawClient {
	return func(t *testing.T, w *world) *rawClient {
		c, r, data := openUpload(t, w, size)
		c.sendStream(append([][]byte{{proto.StreamTypeChunks}}, frames(t, c, r, data)...)...)
		return c
	}
}

// storeAndRestore stores a small file as the hostile client (or finds it
// stored already) and restores it, leaving the restore open (no
// RestoreDone). Call it once before a case's snapshot, so that in the case
// the upload is answered ReadyUnchanged and changes nothing.
func (c *rawClient) storeAndRestore(t *testing.T) *proto.RestoreReady {
	t.Helper()
	d := seededBytes(9, 100)
	m := c.uploadReq("hostile/kept", d)
	c.send(m)
	r := expect[*proto.UploadReady](c)
	if r.Status == proto.ReadySend {
		c.sendData(c.frame(r.Xfer, r.UploadID, 0, d))
		c.finishUpload(r.Xfer, d)
	}
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: "hostile/kept"})
	rr := expect[*proto.RestoreReady](c)
	if rr.Req != req {
		t.Fatalf("RestoreReady %+v", rr)
	}
	return rr
}

func TestChunksHostile(t *testing.T) {
	w := newWorld(t, smallChunks)
	w.mallory(t).storeAndRestore(t)
	flip := func(f []byte, i int) []byte {
		f = bytes.Clone(f)
		f[i] ^= 0x01
		return f
	}
	cases := []hostileCase{
		{"transfer never issued", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			var id [16]byte
			rand.Read(id[:])
			c.sendStream([]byte{proto.StreamTypeChunks}, c.frame(99, id, 0, randBytes(100)))
			return c
		}},
		{"next transfer number, not yet issued", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer+1, r.UploadID, 0, d)}
		})},
		{"chunk crossing the end of the file", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, 900, randBytes(200))}
		})},
		{"chunk past the end of the file", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, 1<<40, randBytes(10))}
		})},
		{"chunk past the protocol's maximum file size", proto.CodeProtocol, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, proto.MaxFileSize-5, randBytes(10))}
		})},
		{"overlapping chunks", proto.CodeBadChunk, chunk(8000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, 0, d[:4000]), c.frame(r.Xfer, r.UploadID, 2000, d[2000:6000])}
		})},
		{"duplicate chunk, freshly sealed", proto.CodeBadChunk, chunk(8000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, 0, d[:4000]), c.frame(r.Xfer, r.UploadID, 0, d[:4000])}
		})},
		{"duplicate frame, replayed byte for byte", proto.CodeBadChunk, chunk(8000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			f := c.frame(r.Xfer, r.UploadID, 0, d[:4000])
			return [][]byte{f, f}
		})},
		{"duplicate frame on a second stream", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			c, r, d := openUpload(t, w, 8000)
			f := c.frame(r.Xfer, r.UploadID, 4000, d[4000:])
			c.sendData(f)
			c.sendStream([]byte{proto.StreamTypeChunks}, f)
			return c
		}},
		{"chunk naming a restore's transfer", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			rr := c.storeAndRestore(t)
			c.sendStream([]byte{proto.StreamTypeChunks}, c.frame(rr.Xfer, rr.TransferID, 0, randBytes(10)))
			return c
		}},
		{"chunk after every byte arrived", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			c, r, d := openUpload(t, w, 1000)
			c.sendData(c.frame(r.Xfer, r.UploadID, 0, d))
			expect[*proto.UploadChecksum](c)
			c.sendStream([]byte{proto.StreamTypeChunks}, c.frame(r.Xfer, r.UploadID, 0, d[:10]))
			return c
		}},
		{"flipped ciphertext bit", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{flip(c.frame(r.Xfer, r.UploadID, 0, d), proto.ChunkHeaderLen+500)}
		})},
		{"flipped tag bit", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			f := c.frame(r.Xfer, r.UploadID, 0, d)
			return [][]byte{flip(f, len(f)-1)}
		})},
		{"flipped nonce counter bit", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{flip(c.frame(r.Xfer, r.UploadID, 0, d), proto.ChunkHeaderLen-1)}
		})},
		{"nonce reserved bytes set", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{flip(c.frame(r.Xfer, r.UploadID, 0, d), 16+1)}
		})},
		{"offset rewritten in the header", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			f := c.frame(r.Xfer, r.UploadID, 0, d[:500])
			binary.BigEndian.PutUint64(f[4:], 500)
			return [][]byte{f}
		})},
		{"chunk moved to another open transfer", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			d := randBytes(1000)
			r1 := c.startUpload("hostile/one", d)
			r2 := c.startUpload("hostile/two", d)
			f := c.frame(r1.Xfer, r1.UploadID, 0, d)
			binary.BigEndian.PutUint32(f, r2.Xfer) // same key, other upload ID
			c.sendStream([]byte{proto.StreamTypeChunks}, f)
			return c
		}},
		{"sealed with another key", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			k, _ := proto.NewSessionKey()
			s, _ := proto.NewSealer(&k, proto.ClientToServer)
			return [][]byte{sealFrame(t, s, r.Xfer, r.UploadID, 0, d)}
		})},
		{"sealed in the server's direction (nonce 'S')", proto.CodeBadChunk, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			s, _ := proto.NewSealer(&c.skey, proto.ServerToClient)
			return [][]byte{sealFrame(t, s, r.Xfer, r.UploadID, 0, d)}
		})},
		{"replayed from an earlier session", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			// Session 1 sends its chunks, sees the checksum, aborts.
			s1, r1, d := openUpload(t, w, 6000)
			recorded := s1.chunkFrames(r1.Xfer, r1.UploadID, d, 4096)
			s1.sendData(recorded...)
			expect[*proto.UploadChecksum](s1)
			s1.send(&proto.UploadAbort{Xfer: r1.Xfer})
			if res := expect[*proto.UploadResult](s1); res.Status != proto.ResultDiscarded {
				t.Fatalf("abort: %+v", res)
			}
			s1.close()
			// Session 2, same client and name, gets the same transfer
			// number; the recorded frames must not authenticate.
			s2 := dialRaw(t, w.srv)
			s2.reconnect(s1.id, w.bad)
			r2 := s2.startUpload(hostileName, d)
			if r2.Xfer != r1.Xfer || r2.UploadID == r1.UploadID {
				t.Fatalf("session 2: transfer %d id %x; session 1: %d %x", r2.Xfer, r2.UploadID, r1.Xfer, r1.UploadID)
			}
			s2.sendStream(append([][]byte{{proto.StreamTypeChunks}}, recorded...)...)
			return s2
		}},
		{"chunk of length 0", proto.CodeProtocol, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{chunkHeader(r.Xfer, 0, 0, proto.ClientToServer, 1), make([]byte, proto.TagSize)}
		})},
		{"chunk longer than the chunk size", proto.CodeProtocol, chunk(8000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, 0, d[:4097])}
		})},
		{"header claiming 4 GiB", proto.CodeProtocol, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{chunkHeader(r.Xfer, 0, 0xffffffff, proto.ClientToServer, 1), d}
		})},
		{"truncated chunk then FIN", proto.CodeProtocol, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			f := c.frame(r.Xfer, r.UploadID, 0, d)
			return [][]byte{f[:len(f)-5]}
		})},
		{"truncated chunk header then FIN", proto.CodeProtocol, chunk(1000, func(t *testing.T, c *rawClient, r *proto.UploadReady, d []byte) [][]byte {
			return [][]byte{c.frame(r.Xfer, r.UploadID, 0, d)[:10]}
		})},
		{"chunk beyond the end of a file with a 4000-byte name", proto.CodeBadChunk, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			comp := strings.Repeat("é", 120) // 240 bytes
			name := strings.Repeat(comp+"/", 16) + strings.Repeat("ü", 80)
			d := randBytes(100)
			r := c.startUpload(name, d)
			c.sendStream([]byte{proto.StreamTypeChunks}, c.frame(r.Xfer, r.UploadID, 50, d))
			return c
		}},
		{"data stream of type 0x44", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c, r, d := openUpload(t, w, 1000)
			c.sendStream([]byte{0x44}, c.frame(r.Xfer, r.UploadID, 0, d))
			return c
		}},
		{"data stream of type 0x00", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.sendStream([]byte{0, 0, 0, 0})
			return c
		}},
		{"control frame on a data stream", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.sendStream(proto.AppendMessage(nil, &proto.ListRequest{Req: 1}))
			return c
		}},
	}
	runHostile(t, w, cases)
	w.restoreAll(t)
}

// TestChunkTransferZero: transfer number 0 is never issued (numbers start
// at 1; 0 is what UploadReady carries when nothing is to be sent). A chunk
// or a commit naming it should be refused like any unissued number.
func TestChunkTransferZero(t *testing.T) {
	w := newWorld(t, nil)
	t.Run("chunk", func(t *testing.T) {
		c := w.mallory(t)
		c.sendStream([]byte{proto.StreamTypeChunks}, c.frame(0, [16]byte{}, 0, randBytes(100)))
		c.expectClosed(proto.CodeBadChunk)
	})
	t.Run("commit", func(t *testing.T) {
		c := w.mallory(t)
		c.send(&proto.UploadCommit{Xfer: 0})
		c.expectClosed(proto.CodeProtocol)
	})
}

func TestControlHostile(t *testing.T) {
	w := newWorld(t, smallChunks)
	w.mallory(t).storeAndRestore(t)
	var cases []hostileCase
	for _, g := range controlGarbage() {
		cases = append(cases, hostileCase{"after the handshake: " + g.name, proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.write(g.bytes(c))
			if g.fin {
				c.ctrl.Close()
			}
			return c
		}})
	}
	for _, m := range []proto.Message{
		&proto.Welcome{ChunkSize: 1},
		&proto.ErrorMessage{Req: 1, Code: proto.CodeInternal},
		&proto.UploadReady{Req: 1, Xfer: 1},
		&proto.UploadChecksum{Xfer: 1},
		&proto.UploadResult{Xfer: 1},
		&proto.ListEntry{Req: 1, Name: "x"},
		&proto.RestoreReady{Req: 1, Xfer: 1, Name: "x"},
	} {
		cases = append(cases, hostileCase{"server message " + m.Type().String() + " from the client", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(m)
			return c
		}})
	}
	cases = append(cases, []hostileCase{
		{"UploadCommit before the checksum", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c, r, d := openUpload(t, w, 8000)
			c.sendData(c.frame(r.Xfer, r.UploadID, 0, d[:4000]))
			c.send(&proto.UploadCommit{Xfer: r.Xfer})
			return c
		}},
		{"UploadCommit of a transfer never issued", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(&proto.UploadCommit{Xfer: 5})
			return c
		}},
		{"UploadAbort of a transfer never issued", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(&proto.UploadAbort{Xfer: 1})
			return c
		}},
		{"UploadRequest of an unknown entry kind", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			m := c.uploadReq("docs/x", nil)
			m.Kind = 7
			c.send(m)
			return c
		}},
		{"UploadRequest of a directory with content", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			m := c.uploadReq("docs/d", []byte("x"))
			m.Kind = proto.KindDir
			c.send(m)
			return c
		}},
		{"UploadRequest with a mode beyond 07777", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			m := c.uploadReq("docs/x", []byte("x"))
			m.Mode = 0o100644
			c.send(m)
			return c
		}},
		{"UploadRequest with a 4097-byte name", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(c.uploadReq(strings.Repeat("abcdefg/", 512)+"x", []byte("x")))
			return c
		}},
		{"UploadRequest over the maximum file size", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			m := c.uploadReq("big", nil)
			m.Size = proto.MaxFileSize + 1
			c.send(m)
			return c
		}},
		{"UploadRequest with trailing bytes", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.write(withTrailingByte(c.uploadReq("a", []byte("x"))))
			return c
		}},
		{"UploadCommit naming a restore's transfer", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			rr := c.storeAndRestore(t)
			c.send(&proto.UploadCommit{Xfer: rr.Xfer})
			return c
		}},
		{"UploadAbort naming a restore's transfer", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			rr := c.storeAndRestore(t)
			c.send(&proto.UploadAbort{Xfer: rr.Xfer})
			return c
		}},
		{"RestoreDone naming an upload's transfer", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c, r, _ := openUpload(t, w, 1000)
			c.send(&proto.RestoreDone{Xfer: r.Xfer})
			return c
		}},
		{"RestoreDone of a transfer never issued", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.send(&proto.RestoreDone{Xfer: 1000})
			return c
		}},
		{"RestoreDone with an unknown status", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			rr := c.storeAndRestore(t)
			b := proto.AppendMessage(nil, &proto.RestoreDone{Xfer: rr.Xfer})
			b[len(b)-1] = 7
			c.write(b)
			return c
		}},
		{"ListRequest cut short", proto.CodeProtocol, func(t *testing.T, w *world) *rawClient {
			c := w.mallory(t)
			c.write(append(frameHeader(proto.TypeListRequest, 3), 0, 0, 0))
			return c
		}},
	}...)
	runHostile(t, w, cases)
	w.restoreAll(t)
}

// TestRequestErrors: requests the server refuses with an Error message for
// that request; the connection stays usable and nothing is created.
func TestRequestErrors(t *testing.T) {
	w := newWorld(t, smallChunks)
	long := strings.Repeat("x", 256)
	cases := []struct {
		name string
		msg  func(c *rawClient, req uint32) proto.Message
		code proto.ErrorCode
	}{}
	for _, n := range []string{"", ".", "..", "../etc/passwd", "/abs", "/", "a//b", "a/", "a/../b", "a/./b", "a\x00b", "a/\x00", long, "dir/" + long} {
		cases = append(cases, struct {
			name string
			msg  func(c *rawClient, req uint32) proto.Message
			code proto.ErrorCode
		}{"upload " + strings.ToValidUTF8(n[:min(len(n), 20)], "?"), func(c *rawClient, req uint32) proto.Message {
			m := c.uploadReq(n, []byte("payload"))
			m.Req = req
			return m
		}, proto.CodeInvalidName})
	}
	more := []struct {
		name string
		msg  func(c *rawClient, req uint32) proto.Message
		code proto.ErrorCode
	}{
		{"restore ..", func(c *rawClient, req uint32) proto.Message { return &proto.RestoreRequest{Req: req, Name: ".."} }, proto.CodeInvalidName},
		{"restore /abs", func(c *rawClient, req uint32) proto.Message { return &proto.RestoreRequest{Req: req, Name: "/abs"} }, proto.CodeInvalidName},
		{"restore a missing file", func(c *rawClient, req uint32) proto.Message { return &proto.RestoreRequest{Req: req, Name: "no/such"} }, proto.CodeNotFound},
		{"restore another client's file", func(c *rawClient, req uint32) proto.Message {
			return &proto.RestoreRequest{Req: req, Name: "docs/file-001.bin"}
		}, proto.CodeNotFound},
		{"restore a missing version", func(c *rawClient, req uint32) proto.Message {
			return &proto.RestoreRequest{Req: req, Name: "docs/file-001.bin", Version: 99}
		}, proto.CodeNotFound},
		{"list ../x", func(c *rawClient, req uint32) proto.Message { return &proto.ListRequest{Req: req, Prefix: "../x"} }, proto.CodeInvalidName},
		{"list a//b", func(c *rawClient, req uint32) proto.Message { return &proto.ListRequest{Req: req, Prefix: "a//b"} }, proto.CodeInvalidName},
	}
	cases = append(cases, more...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := w.snapshot(t)
			c := w.mallory(t)
			req := c.nextReq() + 1000
			c.send(tc.msg(c, req))
			em := c.expectError(req, tc.code)
			t.Logf("refused: %v: %s", em.Code, em.Message)
			if entries, _ := os.ReadDir(filepath.Join(w.srv.Dir, "tmp")); len(entries) != 0 {
				t.Errorf("a refused request left %d temp files", len(entries))
			}
			c.list("", 0) // the connection still serves
			w.unchanged(t, before)
			w.healthy(t)
		})
	}
	// The good client's own file is there under the same name.
	c := registered(t, w.srv, goodName, w.key)
	c.restore("docs/file-001.bin", 0)
	c.close()
	w.restoreAll(t)
}

// TestUploadAbort: an upload aborted mid-transfer is discarded, its temp
// file removed, late chunks for it are dropped, and the session goes on.
func TestUploadAbort(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	c, r, d := openUpload(t, w, 12000)
	c.sendData(c.frame(r.Xfer, r.UploadID, 0, d[:4096]))
	// Wait for the temp file to hold the chunk.
	deadline := time.Now().Add(ioTimeout)
	for {
		entries, _ := os.ReadDir(filepath.Join(w.srv.Dir, "tmp"))
		if len(entries) == 1 {
			if fi, err := entries[0].Info(); err == nil && fi.Size() >= 4096 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first chunk never reached tmp/ (%d entries)", len(entries))
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.send(&proto.UploadAbort{Xfer: r.Xfer})
	res := expect[*proto.UploadResult](c)
	if res.Xfer != r.Xfer || res.Status != proto.ResultDiscarded || res.Version != 0 {
		t.Fatalf("UploadResult %+v; want transfer %d discarded", res, r.Xfer)
	}
	tmpEmpty(t, w.srv)
	// Late chunks of the aborted transfer are dropped quietly, and a second
	// abort or commit of it is not an error.
	c.sendData(c.frame(r.Xfer, r.UploadID, 4096, d[4096:8192]))
	c.send(&proto.UploadAbort{Xfer: r.Xfer}, &proto.UploadCommit{Xfer: r.Xfer})
	if got := c.list("hostile", 0); len(got) != 0 {
		t.Fatalf("aborted upload listed: %+v", got[0])
	}
	// An abort after the checksum discards too.
	r2 := c.startUpload(hostileName, d)
	c.sendData(c.chunkFrames(r2.Xfer, r2.UploadID, d, 4096)...)
	expect[*proto.UploadChecksum](c)
	c.send(&proto.UploadAbort{Xfer: r2.Xfer})
	if res := expect[*proto.UploadResult](c); res.Xfer != r2.Xfer || res.Status != proto.ResultDiscarded {
		t.Fatalf("UploadResult %+v; want transfer %d discarded", res, r2.Xfer)
	}
	// The same connection can still store the file.
	res = c.upload(hostileName, d)
	if res.Version != 1 {
		t.Fatalf("stored as version %d after two discarded attempts", res.Version)
	}
	_, got := c.restore(hostileName, 0)
	if !bytes.Equal(got, d) {
		t.Fatal("restored bytes differ")
	}
	c.close()
	tmpEmpty(t, w.srv)
	w.kept(t, before)
	w.healthy(t)
	w.restoreAll(t)
}

// TestTooManyTransfers: beyond MaxTransfers, requests get CodeLimit; once
// a transfer ends a new one is accepted.
func TestTooManyTransfers(t *testing.T) {
	w := newWorld(t, func(s *quicsrv.Server) { s.MaxTransfers = 2; s.ChunkSize = 4096 })
	before := w.snapshot(t)
	c := w.mallory(t)
	d := randBytes(5000)
	r1 := c.startUpload("hostile/1", d)
	r2 := c.startUpload("hostile/2", d)
	m := c.uploadReq("hostile/3", d)
	c.send(m)
	em := c.expectError(m.Req, proto.CodeLimit)
	t.Logf("third upload: %v: %s", em.Code, em.Message)
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: "anything"})
	// The name does not exist, so either check may answer first; both
	// refuse the request without opening a transfer.
	if em := expect[*proto.ErrorMessage](c); em.Req != req || (em.Code != proto.CodeLimit && em.Code != proto.CodeNotFound) {
		t.Fatalf("restore over the limit: %+v", em)
	}
	if entries, _ := os.ReadDir(filepath.Join(w.srv.Dir, "tmp")); len(entries) != 2 {
		t.Fatalf("%d temp files for 2 open uploads", len(entries))
	}
	// Other sessions have their own budget.
	w.healthy(t)
	// Finishing one frees a slot.
	c.send(&proto.UploadAbort{Xfer: r1.Xfer})
	expect[*proto.UploadResult](c)
	r3 := c.startUpload("hostile/3", d)
	for _, r := range []*proto.UploadReady{r2, r3} {
		c.send(&proto.UploadAbort{Xfer: r.Xfer})
		if res := expect[*proto.UploadResult](c); res.Status != proto.ResultDiscarded {
			t.Fatalf("abort: %+v", res)
		}
	}
	c.close()
	tmpEmpty(t, w.srv)
	w.kept(t, before)
	w.restoreAll(t)
}

// TestStreamLimits: data streams that never send anything or never finish
// use up the client's stream credit; the next one blocks rather than
// breaking anything, the control stream keeps working, and finishing a
// stream frees its slot.
func TestStreamLimits(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	c, r, d := openUpload(t, w, 6000)
	n := int(c.welcome.Streams)
	var stuck []interface{ Close() error }
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		s, err := c.conn.OpenUniStreamSync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("stream %d of %d: %v", i+1, n, err)
		}
		switch i % 3 {
		case 0: // silent
		case 1: // only the stream type
			s.Write([]byte{proto.StreamTypeChunks})
		case 2: // half a chunk header
			s.Write(append([]byte{proto.StreamTypeChunks}, chunkHeader(r.Xfer, 0, 100, proto.ClientToServer, 1)[:7]...))
		}
		stuck = append(stuck, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := c.conn.OpenUniStreamSync(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("data stream %d beyond the limit of %d: %v; want it to block", n+1, n, err)
	}
	// Only one bidirectional stream (the control stream) is allowed.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = c.conn.OpenStreamSync(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second bidirectional stream: %v; want it to block", err)
	}
	// The control stream still works.
	c.list("", 0)
	// Others are served meanwhile.
	w.healthy(t)
	// Finishing the silent stream (a bare FIN) returns its credit.
	stuck[0].Close()
	c.sendData(c.chunkFrames(r.Xfer, r.UploadID, d, 4096)...)
	res := c.finishUpload(r.Xfer, d)
	if res.Status != proto.ResultStored {
		t.Fatalf("upload after freeing a stream: %+v", res)
	}
	_, got := c.restore(hostileName, 0)
	if !bytes.Equal(got, d) {
		t.Fatal("restored bytes differ")
	}
	c.close()
	tmpEmpty(t, w.srv)
	w.kept(t, before)
	w.restoreAll(t)
}

// TestDataStreamReset: a data stream the client resets mid-chunk is
// forgotten; the partial chunk is not counted, and sending it again
// completes the upload.
func TestDataStreamReset(t *testing.T) {
	w := newWorld(t, smallChunks)
	c := registered(t, w.srv, goodName, w.key)
	d := randBytes(8000)
	r := c.startUpload("docs/reset.bin", d)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	s, err := c.conn.OpenUniStreamSync(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	f := c.frame(r.Xfer, r.UploadID, 0, d[:4000])
	s.Write(append([]byte{proto.StreamTypeChunks}, f[:len(f)/2]...))
	time.Sleep(50 * time.Millisecond)
	s.CancelWrite(0x77)
	c.list("", 0) // still served
	c.sendData(c.chunkFrames(r.Xfer, r.UploadID, d, 4000)...)
	c.finishUpload(r.Xfer, d)
	w.files["docs/reset.bin"] = d
	c.close()
	w.healthy(t)
	w.restoreAll(t)
}

// TestThousandsOfStreams: a client opens thousands of data streams, each
// left unfinished (silent, a type byte, half a header, a header and part
// of its payload) until it is reset to make room for the next. The server
// keeps up, holds no goroutine, buffer or budget for them afterwards, and
// the upload they were aimed at still completes.
func TestThousandsOfStreams(t *testing.T) {
	w := newWorld(t, smallChunks)
	before := w.snapshot(t)
	baseline := runtime.NumGoroutine()
	c, r, d := openUpload(t, w, 6000)
	n := 2000
	if testing.Short() {
		n = 300
	}
	header := chunkHeader(r.Xfer, 0, 100, proto.ClientToServer, 1)
	var open []*quic.SendStream
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		s, err := c.conn.OpenUniStreamSync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		switch i % 4 {
		case 1:
			s.Write([]byte{proto.StreamTypeChunks})
		case 2:
			s.Write(append([]byte{proto.StreamTypeChunks}, header[:7]...))
		case 3:
			s.Write(append(append([]byte{proto.StreamTypeChunks}, header...), make([]byte, 50)...))
		}
		open = append(open, s)
		if len(open) == int(c.welcome.Streams) {
			for _, s := range open {
				s.CancelWrite(0)
			}
			open = open[:0]
		}
	}
	for _, s := range open {
		s.CancelWrite(0)
	}
	c.list("", 0) // the control stream was never starved
	c.sendData(c.chunkFrames(r.Xfer, r.UploadID, d, 4096)...)
	if res := c.finishUpload(r.Xfer, d); res.Status != proto.ResultStored {
		t.Fatalf("upload after %d streams: %+v", n, res)
	}
	c.close()
	waitFor(t, "the session to end", func() bool { return quicsrv.SessionCount(w.srv.Srv) == 0 })
	waitFor(t, "the budget to be given back", func() bool { return quicsrv.BudgetInUse(w.srv.Srv) == 0 })
	// quic-go and the test keep a few goroutines of their own; a leak of
	// one per stream would be thousands.
	waitFor(t, "the stream goroutines to end", func() bool { return runtime.NumGoroutine() < baseline+20 })
	w.kept(t, before)
	w.healthy(t)
	w.restoreAll(t)
}

// TestReservedDeviceNames: names that are devices on Windows, or special
// to some tool, are ordinary names on the server's file system; each is
// stored as a regular file in the client's directory and restored as sent.
func TestReservedDeviceNames(t *testing.T) {
	w := newWorld(t, smallChunks)
	m := w.mallory(t)
	names := []string{"CON", "con.txt", "NUL", "aux", "COM1", "LPT9.log", "PRN", "dev/null", "a/CON/b", "-rf", "~", ".git/config", "$HOME", "*", "a:b", "trailing. ", " lead"}
	data := map[string][]byte{}
	for i, n := range names {
		data[n] = randBytes(100 + i)
		m.upload(n, data[n])
	}
	for _, n := range names {
		if _, got := m.restore(n, 0); !bytes.Equal(got, data[n]) {
			t.Errorf("restore of %q differs", n)
		}
	}
	m.close()
	files := 0
	filepath.WalkDir(filepath.Join(w.srv.Dir, "clients"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files++
			if !d.Type().IsRegular() {
				t.Errorf("%s is a %v, not a regular file", p, d.Type())
			}
		}
		return nil
	})
	if files < len(names) {
		t.Errorf("%d files under clients/, want at least %d", files, len(names))
	}
	checkContained(t, w.srv.Dir)
	w.restoreAll(t)
}

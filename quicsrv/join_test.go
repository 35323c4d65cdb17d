package quicsrv_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
)

// join sends UploadJoin for id and returns the answer.
func (c *rawClient) join(id [16]byte) (*proto.UploadReady, *proto.ErrorMessage) {
	c.t.Helper()
	req := c.nextReq()
	c.send(&proto.UploadJoin{Req: req, UploadID: id})
	switch m := expectAny(c).(type) {
	case *proto.UploadReady:
		if m.Req != req || m.Status != proto.ReadyJoined || m.UploadID != id || m.Xfer == 0 {
			c.t.Fatalf("UploadReady %+v for join req %d", m, req)
		}
		return m, nil
	case *proto.ErrorMessage:
		if m.Req != req {
			c.t.Fatalf("Error for req %d, want %d", m.Req, req)
		}
		return nil, m
	default:
		c.t.Fatalf("unexpected %v in answer to UploadJoin", m.Type())
		return nil, nil
	}
}

// TestJoinedUpload: the chunks of one upload travel over three sessions
// of the same client, each sealing with its own key; the checksum and the
// commit stay with the session that opened it, and the file is stored
// whole.
func TestJoinedUpload(t *testing.T) {
	w := newWorld(t, smallChunks)
	owner, b, c := w.mallory(t), w.mallory(t), w.mallory(t)
	data := randBytes(10*4096 + 123)
	r := owner.startUpload("joined.bin", data)
	jb, em := b.join(r.UploadID)
	if em != nil {
		t.Fatalf("join: %+v", em)
	}
	if len(jb.Missing) != 1 || jb.Missing[0] != (proto.Range{Off: 0, Len: uint64(len(data))}) {
		t.Fatalf("joined upload missing %v", jb.Missing)
	}
	jc, _ := c.join(r.UploadID)
	// Chunk i goes over session i mod 3.
	var frames [3][][]byte
	for i, off := 0, 0; off < len(data); i, off = i+1, off+4096 {
		p := data[off:min(off+4096, len(data))]
		switch i % 3 {
		case 0:
			frames[0] = append(frames[0], owner.frame(r.Xfer, r.UploadID, uint64(off), p))
		case 1:
			frames[1] = append(frames[1], b.frame(jb.Xfer, r.UploadID, uint64(off), p))
		case 2:
			frames[2] = append(frames[2], c.frame(jc.Xfer, r.UploadID, uint64(off), p))
		}
	}
	b.sendData(frames[1]...)
	c.sendData(frames[2]...)
	owner.sendData(frames[0]...)
	if res := owner.finishUpload(r.Xfer, data); res.Status != proto.ResultStored {
		t.Fatalf("result %+v", res)
	}
	// The joined transfers ended with the upload: a late chunk is dropped.
	b.sendData(b.frame(jb.Xfer, r.UploadID, 0, data[:4096]))
	b.list("", 0)
	if _, got := c.restore("joined.bin", 0); !bytes.Equal(got, data) {
		t.Fatal("restored bytes differ")
	}
	for _, x := range []*rawClient{owner, b, c} {
		x.close()
	}
	waitFor(t, "the sessions to end", func() bool { return quicsrv.SessionCount(w.srv.Srv) == 0 })
	tmpEmpty(t, w.srv)
	w.healthy(t)
}

// TestJoinHostile: a join names only an upload of the same client in
// another session; a joined transfer carries chunks and nothing else; a
// joined session that goes away leaves the upload to its owner, and an
// owner that goes away takes the upload (kept for resume) with it.
func TestJoinHostile(t *testing.T) {
	w := newWorld(t, smallChunks)
	good := registered(t, w.srv, goodName, w.key)
	data := randBytes(3 * 4096)
	rg := good.startUpload("g.bin", data)

	m1, m2 := w.mallory(t), w.mallory(t)
	// Another client's upload: as if it did not exist.
	if _, em := m1.join(rg.UploadID); em == nil || em.Code != proto.CodeNotFound {
		t.Fatalf("joining another client's upload: %+v", em)
	}
	if _, em := m1.join([16]byte{1, 2, 3}); em == nil || em.Code != proto.CodeNotFound {
		t.Fatalf("joining an unknown upload: %+v", em)
	}
	r := m1.startUpload("m.bin", data)
	// Its own session cannot join it.
	if _, em := m1.join(r.UploadID); em == nil || em.Code != proto.CodeNotFound {
		t.Fatalf("joining from the owner session: %+v", em)
	}
	j, em := m2.join(r.UploadID)
	if em != nil {
		t.Fatal(em)
	}
	// A joined session's key seals for its transfer only: a frame sealed
	// by m1's key on m2's transfer fails authentication.
	m2.sendStream([]byte{proto.StreamTypeChunks}, m1.frame(j.Xfer, r.UploadID, 0, data[:4096]))
	m2.expectClosed(proto.CodeBadChunk)
	// The owner is unaffected and goes on.
	m1.sendData(m1.chunkFrames(r.Xfer, r.UploadID, data, 4096)...)
	if res := m1.finishUpload(r.Xfer, data); res.Status != proto.ResultStored {
		t.Fatalf("%+v", res)
	}

	// Commit and abort belong to the owner.
	m3 := w.mallory(t)
	r = m1.startUpload("m2.bin", data)
	j, _ = m3.join(r.UploadID)
	m3.send(&proto.UploadCommit{Xfer: j.Xfer})
	ae := m3.expectClosed(proto.CodeProtocol)
	if !strings.Contains(ae.ErrorMessage, "another session") {
		t.Errorf("close reason %q", ae.ErrorMessage)
	}
	// The owner leaves after some chunks: the upload is kept for resume,
	// and a joined session's late chunks are dropped quietly.
	m4 := w.mallory(t)
	j4, _ := m4.join(r.UploadID)
	m1.sendData(m1.frame(r.Xfer, r.UploadID, 0, data[:4096]))
	waitFor(t, "the chunk to be written", func() bool { return quicsrv.WrittenBytes(w.srv.Srv) >= 4096 })
	m1.close()
	waitFor(t, "the upload to be parked", func() bool { return quicsrv.ActiveUploads(w.srv.Srv) == 1 }) // good's
	m4.sendData(m4.frame(j4.Xfer, r.UploadID, 4096, data[4096:8192]))
	m4.list("", 0)
	req := m4.uploadReq("m2.bin", data)
	m4.send(req)
	ready := expect[*proto.UploadReady](m4)
	if len(ready.Missing) != 1 || ready.Missing[0].Off != 4096 {
		t.Fatalf("resume after the owner left asks for %v", ready.Missing)
	}
	m4.sendData(framesAt(m4, ready.Xfer, ready.UploadID, data, 4096, len(data), 4096)...)
	if res := m4.finishUpload(ready.Xfer, data); res.Status != proto.ResultStored {
		t.Fatalf("%+v", res)
	}
	m4.close()

	good.sendData(good.chunkFrames(rg.Xfer, rg.UploadID, data, 4096)...)
	good.finishUpload(rg.Xfer, data)
	good.close()
	waitFor(t, "the sessions to end", func() bool { return quicsrv.SessionCount(w.srv.Srv) == 0 })
	tmpEmpty(t, w.srv)
	w.restoreAll(t)
}

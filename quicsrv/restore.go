package quicsrv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/store"
)

// restore is one stored file on its way back to the client.
type restore struct {
	req    uint32
	xfer   uint32
	id     [16]byte
	fv     store.FileVersion
	send   []proto.Range // what to send: all of it, or what a resuming client lacks
	f      *os.File
	files  *fileHold // f's place in the server's open-file budget
	cancel context.CancelFunc
}

func (r *restore) close() {
	r.cancel()
	r.f.Close()
	r.files.release()
}

// restoreRequest answers a RestoreRequest (sha nil) or a RestoreResume
// (the client has the ranges have of the content sha).
func (ss *session) restoreRequest(req uint32, name string, version uint32, have []proto.Range, sha *[32]byte) {
	if err := ss.startRestore(req, name, version, have, sha); err != nil {
		ss.requestFailed(req, err)
	}
}

func (ss *session) startRestore(req uint32, name string, version uint32, have []proto.Range, sha *[32]byte) error {
	if err := store.ValidateName(name); err != nil {
		return err
	}
	var fv store.FileVersion
	var err error
	if version == 0 {
		fv, err = ss.srv.Store.Latest(ss.ctx, ss.client.ID, name)
	} else {
		fv, err = ss.srv.Store.Version(ss.ctx, ss.client.ID, name, int(version))
	}
	if err != nil {
		return err
	}
	if fv.Damaged {
		return proto.Errorf(proto.CodeDamaged, "version %d of \"%s\" no longer matches its checksums on the server (found %s); send the file again to heal it, or restore another version",
			fv.Version, proto.Quote(name), fv.CheckedAt.UTC().Format("2006-01-02 15:04 UTC"))
	}
	size := uint64(fv.Size)
	send := []proto.Range{{Off: 0, Len: size}}
	if sha != nil {
		var kept proto.RangeSet
		fits := *sha == fv.SHA256
		for _, r := range have {
			fits = fits && r.Off+r.Len <= size && kept.Add(r.Off, r.Len) == nil
		}
		if !fits {
			// Versions never change: the client resumes from another
			// server, or one whose data was replaced. It must start afresh.
			return proto.Errorf(proto.CodeNotFound, "version %d of %q is not the file this restore began with", fv.Version, name)
		}
		send = kept.Missing(size)
	}
	hold, err := ss.srv.holdFile(ss.client.ID)
	if err != nil {
		return err
	}
	f, err := ss.srv.Store.OpenVersion(ss.ctx, ss.client.ID, fv)
	if err != nil {
		hold.release()
		if ss.ctx.Err() == nil && !errors.Is(err, store.ErrNotFound) {
			// Missing, or of another size: a check marks it, so the
			// client's next attempt hears why.
			ss.recheck(fv, "stored file cannot be opened for a restore")
		}
		return err
	}
	hold.opened()
	r := &restore{req: req, fv: fv, send: send, f: f, files: hold}
	if _, err := rand.Read(r.id[:]); err != nil {
		f.Close()
		hold.release()
		return err
	}
	ctx, cancel := context.WithCancel(ss.ctx)
	r.cancel = cancel
	ss.mu.Lock()
	if ss.restores == nil {
		ss.mu.Unlock()
		r.close()
		return context.Canceled
	}
	r.xfer, err = ss.newXferLocked(true)
	if err == nil {
		ss.restores[r.xfer] = r
	}
	ss.mu.Unlock()
	if err != nil {
		r.close()
		return err
	}
	err = ss.answer(&proto.RestoreReady{
		Req:        req,
		Xfer:       r.xfer,
		TransferID: r.id,
		Name:       fv.Name,
		Version:    uint32(fv.Version),
		Size:       uint64(fv.Size),
		ModTime:    fv.ModTime.UnixNano(),
		Mode:       fv.Mode,
		CRC:        fv.CRC,
		SHA256:     fv.SHA256,
		Kind:       proto.Kind(fv.Kind),
		Meta:       fv.Meta,
	})
	if err != nil {
		return err
	}
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		if err := ss.pushRestore(ctx, r); err != nil && ctx.Err() == nil {
			ss.fail(err)
		}
	}()
	return nil
}

// chunkSender returns the session's sender of server-to-client chunks,
// starting it on first use.
func (ss *session) chunkSender() *proto.ChunkSender {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.sender == nil {
		open := func(ctx context.Context) (io.WriteCloser, error) {
			s, err := ss.conn.OpenUniStreamSync(ctx)
			if err != nil {
				return nil, err
			}
			return &stalling{s: s, timeout: ss.srv.transferTimeout(), pacing: ss.pacing, streams: ss.srv.streams()}, nil
		}
		ss.sender = proto.NewChunkSender(ss.ctx, ss.sealer, ss.srv.streams(), ss.srv.chunkSize(), open)
	}
	return ss.sender
}

// stalling is a restore's data stream whose writes fail once the client
// has read nothing for the transfer timeout: keep-alives would otherwise
// keep a client that never reads, and what its restores hold, forever.
// A client that asked for a slow pace (Pace) is given twice the time its
// pace needs for the write, all streams sharing the rate, if that is
// longer.
type stalling struct {
	s       *quic.SendStream
	timeout time.Duration
	pacing  *quic.RateLimit // nil: none
	streams int
}

func (w *stalling) Write(p []byte) (int, error) {
	timeout := w.timeout
	if w.pacing != nil {
		if r := w.pacing.Rate(); r > 0 {
			timeout = max(timeout, time.Duration(2*float64(len(p)*w.streams)/r*float64(time.Second)))
		}
	}
	w.s.SetWriteDeadline(time.Now().Add(timeout))
	return w.s.Write(p)
}

func (w *stalling) Close() error { return w.s.Close() }

// closeIdleSenderLocked closes the session's chunk sender once no
// restore needs it, so that the buffers it grew for them go (the next
// restore starts another). ss.mu is held.
func (ss *session) closeIdleSenderLocked() {
	if ss.sender == nil || len(ss.restores) > 0 {
		return
	}
	sender := ss.sender
	ss.sender = nil
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		sender.Close()
	}()
}

// pushRestore reads the stored file once, front to back (only the ranges a
// resuming client lacks), and queues its chunks. A whole file's stored CRC
// is checked on the way: the client verifies what it receives too, but a
// mismatch seen here has the version checked again (and marked damaged)
// even if the client does not say so.
func (ss *session) pushRestore(ctx context.Context, r *restore) error {
	sender := ss.chunkSender()
	ck := proto.NewCksum()
	charge := int64(ss.srv.chunkSize() + proto.TagSize) // a chunk's buffer, plaintext then frame
	sent := func(int, error) {
		ss.acct.release(charge)
		ss.busy()
	}
	for _, rg := range r.send {
		for off, end := rg.Off, rg.Off+rg.Len; off < end; {
			if err := ss.acct.acquire(ctx, charge); err != nil {
				return err
			}
			buf, err := sender.Buffer(ctx)
			if err != nil {
				ss.acct.release(charge)
				return stalled(err, ss.srv.transferTimeout())
			}
			n := min(uint64(len(buf)), end-off)
			if _, err := r.f.ReadAt(buf[:n], int64(off)); err != nil {
				sender.Release(buf)
				ss.acct.release(charge)
				if ctx.Err() != nil {
					return nil // released by the client while we read
				}
				if errors.Is(err, io.EOF) {
					ss.recheck(r.fv, "stored file is shorter than recorded")
				} else {
					ss.log.Error("reading a stored file for a restore failed", "name", r.fv.Name, "version", r.fv.Version, "err", err)
				}
				ss.sendError(r.req, proto.Errorf(proto.CodeInternal, "reading %s version %d on the server failed", r.fv.Name, r.fv.Version))
				return nil
			}
			ck.Write(buf[:n])
			if err := sender.Send(ctx, r.xfer, &r.id, off, buf[:n], sent); err != nil {
				ss.acct.release(charge) // sent is called only for what Send queued
				return stalled(err, ss.srv.transferTimeout())
			}
			off += n
		}
	}
	whole := len(r.send) == 1 && r.send[0].Len == uint64(r.fv.Size)
	if got := ck.Sum32(); whole && got != r.fv.CRC {
		ss.recheck(r.fv, fmt.Sprintf("stored file read for a restore has cksum %d, recorded %d", got, r.fv.CRC))
	}
	return nil
}

func (ss *session) restoreDone(m *proto.RestoreDone) error {
	ss.mu.Lock()
	r := ss.restores[m.Xfer]
	if r != nil {
		delete(ss.restores, m.Xfer)
	}
	ended := r == nil && ss.issuedRestoreLocked(m.Xfer)
	ss.mu.Unlock()
	if r == nil {
		if ended {
			return nil
		}
		return proto.Errorf(proto.CodeProtocol, "RestoreDone for transfer %d, which is not a restore of this session", m.Xfer)
	}
	switch m.Status {
	case proto.DoneFailed:
		ss.log.Debug("client gave up a restore", "name", r.fv.Name, "version", r.fv.Version)
	case proto.DoneMismatch:
		ss.recheck(r.fv, "client received a restore whose checksums did not match")
	}
	r.close()
	ss.mu.Lock()
	ss.closeIdleSenderLocked()
	ss.mu.Unlock()
	ss.transferEnded()
	return nil
}

// stalled is why a restore's chunk could not be queued: the client read
// nothing for the transfer timeout (a stream write's deadline passed,
// which stops the session's sender), or whatever else err says.
func stalled(err error, timeout time.Duration) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return proto.Errorf(proto.CodeAborted, "the client read no restored data for %v", timeout)
	}
	return err
}

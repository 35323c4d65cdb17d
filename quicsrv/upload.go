package quicsrv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/store"
)

type uploadState int

const (
	receiving uploadState = iota // chunks arriving
	checking                     // every byte written; computing checksums
	checked                      // UploadChecksum sent; waiting for commit or abort
	finished                     // committed, discarded or failed
)

// upload is one file arriving in a session.
type upload struct {
	req  uint32
	xfer uint32
	id   [16]byte
	name string
	size uint64
	up   *store.Upload
	// files is its temp file's place in the server's open-file budget,
	// given back when it is unclaimed.
	files *fileHold

	mu       sync.Mutex
	state    uploadState
	got      proto.RangeSet // ranges reserved by arriving chunks
	done     proto.RangeSet // ranges written to the temp file
	written  uint64         // bytes in done
	synced   uint64         // bytes in done as of the last checkpoint that succeeded
	crc      uint32
	sha      [32]byte
	lastSync time.Time // last checkpoint
	lastData time.Time // last chunk received, or the start
	syncing  bool      // a checkpoint is running
	// owner is the session that opened the upload: its checksum, commit,
	// abort and errors go there, under req and xfer. joined are other
	// sessions of the client carrying its chunks (UploadJoin).
	owner  *session
	joined []joinRef

	// The checksums are computed as the upload arrives: a chunk that
	// lands right after the hashed prefix, while nobody hashes, is hashed
	// from memory by the stream that wrote it (all of a file of one
	// chunk; a larger file's chunks while they come in order), and a
	// background hasher reads back the run of written bytes beyond (from
	// the page cache) as it grows, so that once the last chunk is written
	// little is left to hash. hashMu is held by whoever hashes; hashing,
	// under mu, says a background hasher runs.
	hashMu  sync.Mutex
	hasher  proto.FileHasher
	hashing bool  // guarded by mu
	hashed  int64 // hasher.Len(), guarded by mu
}

// hashAhead hashes the written prefix of u until it catches up.
func (ss *session) hashAhead(u *upload) {
	u.hashMu.Lock()
	defer u.hashMu.Unlock()
	for {
		u.mu.Lock()
		end := int64(u.done.Prefix())
		if u.state != receiving || end <= u.hashed {
			u.hashing = false
			u.mu.Unlock()
			return
		}
		u.mu.Unlock()
		err := u.hasher.HashTo(u.up, end)
		u.mu.Lock()
		if err != nil {
			// The upload ended under us (its file closed), or the read
			// failed: the final checksum starts over and reports it.
			u.hasher = proto.FileHasher{}
			u.hashing = false
		}
		u.hashed = u.hasher.Len()
		u.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// checkpointEvery is how often an upload's received ranges are made
// durable until it is committed, which bounds what a server crash loses:
// a chunk written this long after the last checkpoint makes one
// (receive), and so does an upload that has written bytes no checkpoint
// records this long after the last one, because it waits for its commit
// or its chunks stopped (checkpointQuiet). A session that ends for any
// other reason checkpoints everything it wrote. An upload committed
// within checkpointEvery of its start, as most small files are, is never
// checkpointed: its commit makes it durable.
const checkpointEvery = 2 * time.Second

// checkpoint syncs the temp file and records the ranges written so far, so
// a later session can resume from them.
func (ss *session) checkpoint(ctx context.Context, u *upload) {
	u.mu.Lock()
	if u.syncing {
		u.mu.Unlock()
		return
	}
	u.syncing = true
	blob := u.done.AppendRanges(nil)
	written := u.written
	u.mu.Unlock()
	err := u.up.Checkpoint(ctx, blob)
	u.mu.Lock()
	u.syncing = false
	u.lastSync = time.Now()
	if err == nil {
		u.synced = written
	}
	u.mu.Unlock()
	switch {
	case err == nil || errors.Is(err, store.ErrUploadDone):
	case ctx.Err() != nil:
		// The session is ending; parking the upload checkpoints it again,
		// with a context of its own.
		ss.log.Debug("checkpoint cut short by the end of the session", "name", u.name, "err", err)
	default:
		ss.log.Warn("checkpoint", "name", u.name, "err", err)
	}
}

// park keeps an unfinished upload for a later session when the session
// ends: what was written is checkpointed and the file closed. An upload
// that received nothing is discarded.
func (ss *session) park(u *upload) {
	u.mu.Lock()
	wasFinished := u.state == finished
	u.state = finished
	keep := u.written > 0 || u.size == 0
	blob := u.done.AppendRanges(nil) // only writes that completed
	u.mu.Unlock()
	defer ss.srv.unclaim(u.id)
	if wasFinished {
		return
	}
	u.detachJoined()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !keep {
		u.up.Discard(ctx)
		return
	}
	if err := u.up.Checkpoint(ctx, blob); err != nil {
		ss.log.Warn("keeping a partial upload failed; discarding it", "name", u.name, "err", err)
		u.up.Discard(ctx)
		return
	}
	u.up.Release()
	ss.log.Debug("kept partial upload for resume", "name", u.name, "have", u.written, "size", u.size)
}

// surrender gives up the upload id to a newer request of the client for
// its file, made in session by (ss itself, or another session of the
// client): it is kept as a partial upload, and this session's client is
// told the transfer was aborted. It reports whether it gave the upload
// up: not if the upload's final step is under way, or ss is ending.
func (ss *session) surrender(id [16]byte, by *session) bool {
	return ss.giveUp(func(u *upload) bool { return u.id == id && u.owner == ss }, func(u *upload) error {
		if by == ss {
			ss.log.Debug("upload taken over by a newer request of the session", "name", u.name)
			return proto.Errorf(proto.CodeAborted, "a newer request of this session for %q took over its upload", u.name)
		}
		ss.log.Debug("upload taken over by a newer session of the client", "name", u.name)
		return proto.Errorf(proto.CodeAborted, "another session of this client took over the upload of %q", u.name)
	}) > 0
}

// giveUp ends the uploads that match, unless their commit is under way:
// each is kept as a partial upload, and the client gets the error why
// returns for it. It returns how many it ended.
func (ss *session) giveUp(match func(*upload) bool, why func(*upload) error) int {
	var gone []*upload
	ss.mu.Lock()
	for x, u := range ss.uploads {
		if !match(u) {
			continue
		}
		u.mu.Lock()
		committing := u.state == finished
		u.mu.Unlock()
		if !committing { // a commit under way is let finish
			delete(ss.uploads, x)
			gone = append(gone, u)
		}
	}
	ss.mu.Unlock()
	for _, u := range gone {
		ss.park(u)
		ss.sendError(u.req, why(u))
	}
	if len(gone) > 0 {
		ss.transferEnded()
	}
	return len(gone)
}

// stalled ends the uploads that have received nothing for the transfer
// timeout while still waiting for chunks. They are kept for resume.
func (ss *session) stalled(now time.Time) {
	timeout := ss.srv.transferTimeout()
	ss.giveUp(func(u *upload) bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.owner == ss && u.state == receiving && now.Sub(u.lastData) >= timeout
	}, func(u *upload) error {
		ss.log.Debug("upload stalled; kept for resume", "name", u.name, "timeout", timeout.String())
		return proto.Errorf(proto.CodeAborted, "no data for %q in %v; what arrived is kept, send again to resume", u.name, timeout)
	})
}

// checkpointQuiet checkpoints the uploads of ss that hold written bytes
// no checkpoint records, checkpointEvery after their last checkpoint:
// receive does that only when a chunk arrives, and none comes after the
// last one, nor while a client pauses.
func (ss *session) checkpointQuiet(now time.Time) {
	var due []*upload
	ss.mu.Lock()
	for _, u := range ss.uploads {
		u.mu.Lock()
		if u.owner == ss && u.state != finished && !u.syncing && u.written > u.synced && now.Sub(u.lastSync) >= checkpointEvery {
			due = append(due, u)
		}
		u.mu.Unlock()
	}
	ss.mu.Unlock()
	for _, u := range due {
		ss.wg.Add(1)
		go func() {
			defer ss.wg.Done()
			ss.checkpoint(ss.ctx, u)
		}()
	}
}

// watch checks for stalled uploads, for uploads to checkpoint, and for
// the session being idle, until the session ends.
func (ss *session) watch() {
	every := min(ss.srv.transferTimeout()/4, checkpointEvery/2)
	if idle := ss.srv.idleSession(); idle > 0 {
		every = min(every, idle/4)
	}
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ss.ctx.Done():
			return
		case now := <-t.C:
			ss.stalled(now)
			ss.checkpointQuiet(now)
			if ss.idle(now) {
				ss.log.Debug("closing an idle session", "after", ss.srv.idleSession().String())
				ss.closeWith(proto.CodeNoError, "idle")
				return
			}
		}
	}
}

// busy notes that the session does something for its client: a request,
// a chunk in or out.
func (ss *session) busy() {
	if st := ss.state; st != nil {
		st.lastBusy.Store(time.Now().UnixNano())
	}
}

// idle reports whether the session should end for IdleSession: it has no
// request or transfer open, and its client has done nothing in any
// session for that long.
func (ss *session) idle(now time.Time) bool {
	timeout := ss.srv.idleSession()
	if timeout < 0 || ss.state == nil {
		return false
	}
	ss.mu.Lock()
	open := ss.opening > 0 || len(ss.uploads) > 0 || len(ss.restores) > 0
	ss.mu.Unlock()
	if open {
		ss.busy()
		return false
	}
	return now.Sub(time.Unix(0, ss.state.lastBusy.Load())) >= timeout
}

// uploadRequest answers m in its turn at the file (see fileTurn).
func (ss *session) uploadRequest(m *proto.UploadRequest, turn *fileTurn) {
	defer turn.end()
	if turn.wait(ss.ctx) != nil {
		return // the session ended: nobody to answer
	}
	if err := ss.startUpload(m); err != nil {
		ss.requestFailed(m.Req, err)
	}
}

// fileTurn is an upload request's turn at its file: the requests for one
// file of a client are handled one at a time, each once those read before
// it (in any session of the client) have been answered, so that each sees
// what the ones before did: a newer request takes over the older one's
// upload (takeOver), and the quota check neither counts an upload the
// request then replaces nor misses one.
type fileTurn struct {
	srv   *Server
	ref   fileRef
	ready chan struct{} // closed when it is this request's turn
}

// queueTurn queues a request for the client's file name behind those
// queued before. The control loop calls it as it reads the request, so a
// session's requests for a file take their turns in the order it sent
// them.
func (s *Server) queueTurn(c store.ClientID, name string) *fileTurn {
	t := &fileTurn{srv: s, ref: fileRef{c, name}, ready: make(chan struct{})}
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	if s.turns == nil {
		s.turns = make(map[fileRef][]*fileTurn)
	}
	q := s.turns[t.ref]
	if len(q) == 0 {
		close(t.ready)
	}
	s.turns[t.ref] = append(q, t)
	return t
}

// wait waits for the turn, or for ctx to end. The turns before are
// bounded: each waits for the store, and at most 10 s for sessions to let
// go of the file's uploads (awaitRelease), which a session that ends does
// without waiting for its queued requests.
func (t *fileTurn) wait(ctx context.Context) error {
	select {
	case <-t.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// end ends the turn, or leaves the queue if it was not its turn yet.
func (t *fileTurn) end() {
	s := t.srv
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	q := s.turns[t.ref]
	i := slices.Index(q, t)
	q = slices.Delete(q, i, i+1)
	if len(q) == 0 {
		delete(s.turns, t.ref)
		return
	}
	s.turns[t.ref] = q
	if i == 0 {
		close(q[0].ready)
	}
}

// errAnswerLost is why a request failed when its answer could not be
// written: the control stream or the connection is gone. The session's
// context may not show it yet (quic-go fails stream writes before it ends
// the connection's context), but there is no one left to tell, and nothing
// went wrong on the server.
var errAnswerLost = errors.New("quicsrv: the answer could not be written")

// answer writes the answer to a request; a failure is errAnswerLost.
func (ss *session) answer(m proto.Message) error {
	if err := ss.send(m); err != nil {
		return fmt.Errorf("%w: %w", errAnswerLost, err)
	}
	return nil
}

// requestFailed tells the client that request req failed, unless it failed
// because the client can no longer be told.
func (ss *session) requestFailed(req uint32, err error) {
	if errors.Is(err, errAnswerLost) {
		ss.log.Debug("request ended with the session", "req", req, "err", err)
		return
	}
	ss.sendError(req, storeErr(err))
}

func (ss *session) startUpload(m *proto.UploadRequest) error {
	if err := proto.ValidateName(m.Name); err != nil {
		return proto.Errorf(proto.CodeInvalidName, "%s", strings.TrimPrefix(err.Error(), proto.ErrInvalidName.Error()+": "))
	}
	// An upload of the file whose final step is under way (a commit, an
	// abort, a session parking it) is let finish first: a commit may store
	// what this request describes, and the quota check sees the outcome.
	ss.srv.awaitRelease(ss, ss.srv.settling(ss.client.ID, m.Name))
	latest, err := ss.srv.Store.Latest(ss.ctx, ss.client.ID, m.Name)
	switch {
	case err == nil:
		if unchanged(latest, m) {
			if !sameAttrs(latest, m) {
				// The content is there; what changed is its metadata
				// (chmod, chown, an xattr): record it, send nothing.
				if err := ss.srv.Store.UpdateAttrs(ss.ctx, ss.client.ID, m.Name, latest.Version, time.Unix(0, m.ModTime), m.Mode, m.Meta); err != nil {
					return err
				}
			}
			return ss.answer(&proto.UploadReady{Req: m.Req, Status: proto.ReadyUnchanged, Version: uint32(latest.Version)})
		}
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	if err := ss.checkLimits(m); err != nil {
		return err
	}

	ss.mu.Lock()
	xfer, err := ss.newXferLocked(false)
	ss.mu.Unlock()
	if err != nil {
		return err
	}
	u, err := ss.openUpload(m)
	if err != nil {
		ss.mu.Lock()
		ss.unreserveLocked()
		ss.mu.Unlock()
		return err
	}
	u.req, u.xfer = m.Req, xfer
	missing := u.done.Missing(u.size)
	if len(missing) > proto.MaxRanges {
		// Too fragmented to describe in one message: take it all again.
		missing = []proto.Range{{Off: 0, Len: u.size}}
		u.got, u.done, u.written, u.synced = proto.RangeSet{}, proto.RangeSet{}, 0, 0
	}
	if len(missing) == 0 {
		u.state = checking // nothing to wait for: empty, or every byte already here
	}
	ss.mu.Lock()
	ss.unreserveLocked()
	if ss.uploads == nil { // the session ended meanwhile
		ss.mu.Unlock()
		ss.park(u)
		return context.Canceled
	}
	ss.uploads[xfer] = u
	ss.mu.Unlock()

	ready := &proto.UploadReady{Req: m.Req, Xfer: xfer, UploadID: u.id, Status: proto.ReadySend, Missing: missing}
	if err := ss.answer(ready); err != nil {
		return err
	}
	if len(missing) == 0 {
		ss.startChecksum(u)
	}
	return nil
}

// checkLimits refuses an upload over the server's file size limit or the
// client's quotas.
func (ss *session) checkLimits(m *proto.UploadRequest) error {
	srv := ss.srv
	if limit := srv.maxFileSize(); m.Size > limit {
		return proto.Errorf(proto.CodeTooLarge, "file of %d bytes is over the server's limit of %d bytes", m.Size, limit)
	}
	if srv.QuotaBytes <= 0 && srv.QuotaFiles <= 0 {
		return nil
	}
	// Unfinished uploads, running or kept for resume, count at their full
	// size and as a file each: they will take that when they finish. This
	// request replaces those of its own file (takeOver gives up the one a
	// session receives; ResumeUpload resumes it, or what is kept, or
	// discards it as stale), and counts the one it resumes once, at
	// m.Size; only one whose final step is under way is let finish, and
	// counts. Read in this order, an upload that is committed meanwhile
	// is counted twice rather than not at all: first as unfinished, then
	// as stored.
	settling, settlingN := srv.settlingSize(ss.client.ID, m.Name)
	pending, pendingN, err := srv.Store.Pending(ss.ctx, ss.client.ID, m.Name)
	if err != nil {
		return err
	}
	pending, pendingN = pending+settling, pendingN+settlingN
	bytes, files, err := srv.Store.Usage(ss.ctx, ss.client.ID)
	if err != nil {
		return err
	}
	if srv.QuotaFiles > 0 && files+pendingN+1 > srv.QuotaFiles {
		msg := fmt.Sprintf("file quota exceeded: %d file versions stored", files)
		if pendingN > 0 {
			msg += fmt.Sprintf(" and %d unfinished uploads", pendingN)
		}
		return proto.Errorf(proto.CodeLimit, "%s, the limit is %d", msg, srv.QuotaFiles)
	}
	if srv.QuotaBytes > 0 {
		used := uint64(bytes) + uint64(pending)
		if quota := uint64(srv.QuotaBytes); used > quota || m.Size > quota-used {
			msg := fmt.Sprintf("storage quota exceeded: %s stored", formatBytes(uint64(bytes)))
			if pending > 0 {
				msg += fmt.Sprintf(" + %s in unfinished uploads", formatBytes(uint64(pending)))
			}
			return proto.Errorf(proto.CodeLimit, "%s + %s > %s", msg, formatBytes(m.Size), formatBytes(quota))
		}
	}
	return nil
}

// settling returns the client's uploads of name whose final step is
// under way: a commit or an abort, or a session parking them.
func (s *Server) settling(c store.ClientID, name string) []*upload {
	us := s.uploadsOf(c, name)
	return slices.DeleteFunc(us, func(u *upload) bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.state != finished
	})
}

// settlingSize sums the sizes of what settling returns, and counts them.
func (s *Server) settlingSize(c store.ClientID, name string) (bytes int64, n int) {
	for _, u := range s.settling(c, name) {
		bytes += int64(u.size)
		n++
	}
	return bytes, n
}

// formatBytes writes n in binary units: "512 B", "9.5 MiB".
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	s := strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string("KMGTPE"[exp]) + "iB"
}

// openUpload takes over the client's open upload of the file, if any
// (takeOver), and resumes the partial upload of the same file (same name,
// size and modification time) that it or an earlier session left, or
// starts a new one. The store discards partial uploads of an earlier state
// of the file, so a file that changed is sent afresh, never stitched
// together.
func (ss *session) openUpload(m *proto.UploadRequest) (*upload, error) {
	st := ss.srv.Store
	mtime := time.Unix(0, m.ModTime)
	if ss.srv.takeOver(ss, m.Name) {
		// An upload of the file began its commit after the quota check,
		// so that did not count it: it is stored now (or gone), and
		// counts.
		if err := ss.checkLimits(m); err != nil {
			return nil, err
		}
	}
	// After the takeover: what it gives back may be the file this needs.
	hold, err := ss.srv.holdFile(ss.client.ID)
	if err != nil {
		return nil, err
	}
	up, blob, err := st.ResumeUpload(ss.ctx, ss.client.ID, m.Name, int64(m.Size), mtime, ss.srv.claimed)
	if err == nil {
		done, perr := &proto.RangeSet{}, error(nil)
		if blob != nil { // nil: never checkpointed, so nothing is known to be there
			done, perr = proto.ParseRangeSet(blob, m.Size)
		}
		if perr != nil {
			ss.log.Warn("partial upload has unreadable ranges; starting afresh", "name", m.Name, "err", perr)
			up.Discard(ss.ctx)
		} else {
			now := time.Now()
			u := &upload{id: up.ID(), name: m.Name, size: m.Size, up: up, files: hold, got: done.Clone(), done: *done, written: done.Total(), synced: done.Total(), lastSync: now, lastData: now, owner: ss}
			up.SetAttrs(m.Mode, uint8(m.Kind), m.Meta)
			if ss.srv.claim(u) {
				hold.opened()
				ss.log.Debug("resuming upload", "name", m.Name, "have", u.written, "size", m.Size)
				return u, nil
			}
			up.Release() // another session took it meanwhile
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		hold.release()
		return nil, err
	}
	up, err = st.NewUpload(ss.ctx, ss.client.ID, m.Name, int64(m.Size), mtime, m.Mode)
	if err != nil {
		hold.release()
		return nil, err
	}
	up.SetAttrs(m.Mode, uint8(m.Kind), m.Meta)
	now := time.Now()
	u := &upload{id: up.ID(), name: m.Name, size: m.Size, up: up, files: hold, lastSync: now, lastData: now, owner: ss}
	ss.srv.claim(u) // a new random ID: nobody has it
	hold.opened()   // unless it was given up meanwhile, and with it the hold
	return u, nil
}

// unchanged reports whether the stored version already holds the content
// the request describes: same kind and size, and same checksums when the
// client hashed the file, same modification time otherwise (rsync's quick
// check). A damaged version never holds it: the upload heals it.
func unchanged(fv store.FileVersion, m *proto.UploadRequest) bool {
	if !fv.Verified || fv.Damaged || proto.Kind(fv.Kind) != m.Kind || uint64(fv.Size) != m.Size {
		return false
	}
	if m.Flags&proto.FlagHashed != 0 {
		return fv.CRC == m.CRC && fv.SHA256 == m.SHA256
	}
	return fv.ModTime.UnixNano() == m.ModTime
}

// sameAttrs reports whether the stored version records the request's
// modification time, mode and metadata.
func sameAttrs(fv store.FileVersion, m *proto.UploadRequest) bool {
	return fv.ModTime.UnixNano() == m.ModTime && fv.Mode == m.Mode && bytes.Equal(fv.Meta, m.Meta)
}

// acceptData serves the data streams the client opens.
func (ss *session) acceptData() {
	for {
		rs, err := ss.conn.AcceptUniStream(ss.ctx)
		if err != nil {
			return
		}
		ss.wg.Add(1)
		go func() {
			defer ss.wg.Done()
			if err := ss.readData(rs); err != nil {
				ss.fail(err)
			}
		}()
	}
}

func (ss *session) readData(rs *quic.ReceiveStream) error {
	var t [1]byte
	if _, err := io.ReadFull(rs, t[:]); err != nil {
		return nil // the stream ended before it said anything
	}
	if t[0] != proto.StreamTypeChunks {
		return proto.Errorf(proto.CodeProtocol, "unknown data stream type %#x", t[0])
	}
	var cur *upload
	resolve := func(xfer uint32) (*[16]byte, error) {
		ss.mu.Lock()
		u := ss.uploads[xfer]
		ended := u == nil && ss.issuedUploadLocked(xfer)
		ss.mu.Unlock()
		if ended {
			return nil, proto.ErrSkipChunk // a late chunk of an aborted upload
		}
		if u == nil {
			return nil, proto.Errorf(proto.CodeBadChunk, "chunk for transfer %d, which is not an upload of this session", xfer)
		}
		cur = u
		return &u.id, nil
	}
	handle := func(h *proto.ChunkHeader, p []byte) error {
		return ss.receive(cur, h.Offset, p)
	}
	pr := &progressReader{rs: rs, stall: ss.srv.chunkStall()}
	cr := proto.NewChunkReader(pr, uint32(ss.srv.chunkSize()))
	cr.Buffers = &chunkBuffers{ss: ss, pr: pr}
	err := proto.ReadChunkFrames(cr, ss.opener, resolve, handle)
	var serr *quic.StreamError
	if errors.As(err, &serr) {
		return nil // the client reset the stream; its transfers will say why
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return proto.Errorf(proto.CodeAborted, "a data stream stopped in the middle of a chunk for %v", ss.srv.chunkStall())
	}
	return err
}

// progressReader reads a data stream; while a chunk is being read into a
// buffer from the budget (armed), each read that brings bytes moves the
// stream's deadline chunkStall ahead, so that a chunk that stops arriving
// gives its buffer back within chunkStall, however slowly a live one
// comes.
type progressReader struct {
	rs    *quic.ReceiveStream
	stall time.Duration
	armed bool // only the stream's own goroutine reads it
}

func (r *progressReader) Read(p []byte) (int, error) {
	n, err := r.rs.Read(p)
	if n > 0 && r.armed {
		r.rs.SetReadDeadline(time.Now().Add(r.stall))
	}
	return n, err
}

func (r *progressReader) arm(on bool) {
	r.armed = on
	if on {
		r.rs.SetReadDeadline(time.Now().Add(r.stall))
	} else {
		r.rs.SetReadDeadline(time.Time{})
	}
}

// chunkPool recycles chunk buffers across streams and connections.
var chunkPool sync.Pool

// chunkBuffers lends a data stream its chunk buffers out of the server's
// memory budget, and bounds how long a chunk may take to arrive once its
// header has.
type chunkBuffers struct {
	ss   *session
	pr   *progressReader
	held *[]byte // the pool's box for the buffer lent, so Put allocates none
}

func (b *chunkBuffers) Get(n int) ([]byte, error) {
	if err := b.ss.acct.acquire(b.ss.ctx, int64(n)); err != nil {
		return nil, err
	}
	b.pr.arm(true)
	if p, ok := chunkPool.Get().(*[]byte); ok {
		if cap(*p) >= n {
			b.held = p
			return (*p)[:n], nil
		}
	}
	size := b.ss.srv.chunkSize() + proto.TagSize
	return make([]byte, n, max(n, size)), nil
}

func (b *chunkBuffers) Put(p []byte) {
	b.pr.arm(false)
	b.ss.acct.release(int64(len(p)))
	box := b.held
	b.held = nil
	if box == nil {
		box = new([]byte)
	}
	*box = p[:cap(p)]
	chunkPool.Put(box)
}

// receive writes one decrypted chunk into its upload.
func (ss *session) receive(u *upload, off uint64, p []byte) error {
	n := uint64(len(p))
	u.mu.Lock()
	if u.state == finished {
		u.mu.Unlock()
		return nil // aborted while this chunk was in flight
	}
	if u.state != receiving {
		u.mu.Unlock()
		return proto.Errorf(proto.CodeBadChunk, "chunk for %q after every byte arrived", u.name)
	}
	if off > u.size || n > u.size-off {
		u.mu.Unlock()
		return proto.Errorf(proto.CodeBadChunk, "chunk [%d,+%d) beyond the %d-byte size of %q", off, n, u.size, u.name)
	}
	if err := u.got.Add(off, n); err != nil {
		u.mu.Unlock()
		return proto.Errorf(proto.CodeBadChunk, "%q: %v", u.name, err)
	}
	u.mu.Unlock()

	if _, err := u.up.WriteAt(p, int64(off)); err != nil {
		ss.failUpload(u, storeErr(err))
		return nil
	}
	if u.hashMu.TryLock() { // else the background hasher will read it back
		if u.hasher.Len() == int64(off) {
			u.hasher.Write(p)
			u.mu.Lock()
			u.hashed = u.hasher.Len()
			u.mu.Unlock()
		}
		u.hashMu.Unlock()
	}
	u.mu.Lock()
	if u.state != receiving {
		u.mu.Unlock()
		return nil
	}
	if err := u.done.Add(off, n); err != nil {
		// got reserved the range, so this is a bug: say so, rather than
		// let the ranges a checkpoint records go wrong in silence.
		ss.log.Error("written ranges out of step with reserved ones", "name", u.name, "off", off, "len", n, "err", err)
	}
	u.written += n
	u.lastData = time.Now()
	ss.busy()
	done := u.written == u.size
	if done {
		u.state = checking
	}
	// The last chunk too: the upload may wait long for its commit.
	sync := !u.syncing && time.Since(u.lastSync) >= checkpointEvery
	hash := !done && !u.hashing && int64(u.done.Prefix())-u.hashed >= proto.HashStep
	if hash {
		u.hashing = true
	}
	u.mu.Unlock()
	if hash {
		ss.wg.Add(1)
		go func() {
			defer ss.wg.Done()
			ss.hashAhead(u)
		}()
	}
	if done {
		ss.startChecksum(u)
	}
	if sync {
		ss.wg.Add(1)
		go func() {
			defer ss.wg.Done()
			ss.checkpoint(ss.ctx, u)
		}()
	}
	return nil
}

// failUpload ends an upload the server cannot complete and tells the client.
func (ss *session) failUpload(u *upload, err error) {
	if u.owner != ss {
		u.owner.failUpload(u, err) // a joined session's write failed
		return
	}
	u.mu.Lock()
	if u.state == finished {
		u.mu.Unlock()
		return
	}
	u.state = finished
	u.mu.Unlock()
	u.up.Discard(context.Background())
	ss.srv.unclaim(u.id) // gone before the client hears of it
	ss.sendError(u.req, err)
	ss.removeUpload(u)
}

func (ss *session) removeUpload(u *upload) {
	ss.mu.Lock()
	if ss.uploads != nil {
		delete(ss.uploads, u.xfer)
	}
	ss.mu.Unlock()
	ss.srv.unclaim(u.id)
	u.detachJoined()
	ss.transferEnded()
}

// startChecksum computes the checksums of a reassembled upload, whose
// state the caller set to checking, in the background and sends them to
// the upload's owner. ss is the session that received the last chunk: the
// goroutine is its, so that it never outlives the session that started it.
func (ss *session) startChecksum(u *upload) {
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		// What the hasher has not reached yet: usually the last few
		// chunks.
		u.hashMu.Lock()
		err := u.hasher.HashTo(u.up, int64(u.size))
		crc, sha := u.hasher.Sum()
		u.hashMu.Unlock()
		if err != nil {
			u.owner.failUpload(u, fmt.Errorf("reading back %q: %w", u.name, err))
			return
		}
		u.mu.Lock()
		if u.state != checking {
			u.mu.Unlock()
			return
		}
		u.state = checked
		u.crc, u.sha = crc, sha
		u.mu.Unlock()
		u.owner.send(&proto.UploadChecksum{Xfer: u.xfer, CRC: crc, SHA256: sha})
	}()
}

// takeUpload claims an open upload for its final step. It returns nil and
// no error for a transfer that already ended (failed on the server while
// the client's message was in flight): the client learns of that from the
// ErrorMessage sent when it failed.
func (ss *session) takeUpload(xfer uint32, want uploadState) (*upload, error) {
	ss.mu.Lock()
	u := ss.uploads[xfer]
	ended := u == nil && ss.issuedUploadLocked(xfer)
	ss.mu.Unlock()
	if ended {
		return nil, nil
	}
	if u == nil {
		return nil, proto.Errorf(proto.CodeProtocol, "transfer %d is not an upload of this session", xfer)
	}
	if u.owner != ss {
		return nil, proto.Errorf(proto.CodeProtocol, "transfer %d joins an upload of another session; commit or abort it there", xfer)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state == finished {
		return nil, nil
	}
	if want == checked && u.state != checked {
		return nil, proto.Errorf(proto.CodeProtocol, "commit of transfer %d before its checksum was sent", xfer)
	}
	u.state = finished
	return u, nil
}

func (ss *session) uploadCommit(xfer uint32) error {
	u, err := ss.takeUpload(xfer, checked)
	if u == nil {
		return err
	}
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		// The transfer counts as open until its answer is written, so a
		// draining session does not end under it.
		defer ss.removeUpload(u)
		// The client asked for this commit: finish it even if the
		// connection drops meanwhile.
		fv, created, err := u.up.Commit(context.WithoutCancel(ss.ctx), u.crc, u.sha)
		if err != nil {
			u.up.Discard(context.Background())
		}
		// Stored (or gone) now, so no longer in flight: the quota must not
		// count it twice for a request the client sends on our answer.
		ss.srv.unclaim(u.id)
		if err != nil {
			ss.sendError(u.req, storeErr(err))
			return
		}
		status := proto.ResultStored
		if !created {
			status = proto.ResultIdentical
		}
		ss.log.Debug("stored", "name", fv.Name, "version", fv.Version, "size", fv.Size, "new", created)
		if u.up.Healed() {
			ss.log.Info("healed a damaged version: the client sent the same content again", "name", fv.Name, "version", fv.Version)
		}
		ss.send(&proto.UploadResult{Xfer: xfer, Status: status, Version: uint32(fv.Version), StoredAt: fv.StoredAt.UnixNano()})
	}()
	return nil
}

func (ss *session) uploadAbort(xfer uint32) error {
	u, err := ss.takeUpload(xfer, receiving)
	if u == nil {
		return err
	}
	defer ss.removeUpload(u)
	if err := u.up.Discard(context.WithoutCancel(ss.ctx)); err != nil {
		ss.log.Warn("discard", "name", u.name, "err", err)
	}
	ss.srv.unclaim(u.id) // gone before the client hears of it
	ss.log.Debug("upload discarded by the client", "name", u.name)
	return ss.send(&proto.UploadResult{Xfer: xfer, Status: proto.ResultDiscarded})
}

package quiccli

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qbackup/qbackup/proto"
)

// restoreSink receives one file from the server into a temporary file
// beside its destination.
type restoreSink struct {
	f        *os.File
	direct   *os.File    // f opened for direct I/O (openDirect), or nil
	noDirect atomic.Bool // the file system refused a direct write
	progress func(n int64)

	mu      sync.Mutex
	id      [16]byte
	size    uint64
	got     proto.RangeSet // ranges claimed by a chunk, written or being written
	wrote   proto.RangeSet // ranges written
	written uint64
	closed  bool
	done    chan struct{} // closed once every byte is written, or on failure
	err     error

	// The file is hashed, and flushed to disk, as it arrives. Chunks
	// arrive nearly in order, a few streams at a time, so the sink keeps
	// each written chunk in memory (held, at most maxHeld of them) until
	// the bytes before it are hashed, and a background hasher hashes the
	// prefix from there; what it could not keep it reads back from the
	// file. It syncs the file about once a second, so that once the last
	// chunk is written little is left to hash or flush. hashMu is held by
	// whoever hashes; hashing, under mu, says the hasher runs; bg tracks
	// it, so that the file outlives it.
	hashMu   sync.Mutex
	hasher   proto.FileHasher
	lastSync time.Time // guarded by hashMu
	hashing  bool
	hashed   int64            // hasher.Len(), guarded by mu
	bgErr    error            // why the background hasher failed, guarded by mu
	held     map[int64][]byte // written chunks not hashed yet, by offset; guarded by mu
	bufs     *alignedBuffers  // where held buffers go back to
	bg       sync.WaitGroup

	resumed *partialRestore // what a resumed sink holds part of, or nil
}

// restoreSyncStep is how often the background hasher flushes what was
// written (it starts once the written prefix is proto.HashStep ahead).
const restoreSyncStep = time.Second

// maxHeld is how many written chunks a sink keeps in memory to hash:
// enough for the chunks of every data stream (8 by default) to finish out
// of order twice over. A session's sinks together hold at most
// heldBudget bytes (alignedBuffers.hold).
const maxHeld = 16

func newRestoreSink(f, direct *os.File, bufs *alignedBuffers, progress func(int64)) *restoreSink {
	return &restoreSink{f: f, direct: direct, bufs: bufs, progress: progress, done: make(chan struct{})}
}

// resumeSink is a sink for the rest of the file p holds the front of.
func resumeSink(p *partialRestore, bufs *alignedBuffers, progress func(int64)) *restoreSink {
	k := newRestoreSink(p.f, p.direct, bufs, progress)
	k.resumed = p
	k.size = p.size
	k.got = p.have.Clone()
	k.wrote = p.have.Clone()
	k.written = p.have.Total()
	k.hasher = p.hasher
	k.hashed = p.hasher.Len()
	return k
}

// partialRestore is what a restore cut off by a lost connection leaves for
// the next session to resume: the temporary file, the ranges of it that
// are written (hasher has hashed a prefix of them), and the version they
// belong to.
type partialRestore struct {
	tmp     string
	f       *os.File
	direct  *os.File // f for direct I/O, or nil
	hasher  proto.FileHasher
	have    proto.RangeSet
	version uint32
	size    uint64
	sha     [32]byte
}

// haveRanges returns the ranges p has, at most proto.MaxResumeRanges of
// them (the first; the others are fetched again), and keeps p to those.
func (p *partialRestore) haveRanges() []proto.Range {
	rs := p.have.Ranges()
	if len(rs) > proto.MaxResumeRanges {
		rs = rs[:proto.MaxResumeRanges]
		p.have = proto.RangeSet{}
		for _, r := range rs {
			p.have.Add(r.Off, r.Len)
		}
	}
	return rs
}

// dropPart removes what an interrupted attempt at t left, if anything.
func (t *restoreTarget) dropPart() {
	if p := t.part; p != nil {
		p.close()
		os.Remove(p.tmp)
		t.part = nil
	}
}

// close closes p's file.
func (p *partialRestore) close() error {
	if p.direct != nil {
		p.direct.Close() // only written through: f's close says what matters
	}
	return p.f.Close()
}

// closedSink drops every chunk sent to it.
func closedSink() *restoreSink {
	k := &restoreSink{done: make(chan struct{})}
	k.finishLocked(errSessionClosed)
	return k
}

// bind is called with the server's description of the transfer.
func (k *restoreSink) bind(m *proto.RestoreReady) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p := k.resumed; p != nil && (m.Version != p.version || m.SHA256 != p.sha || m.Size != p.size) {
		// Refused before a chunk of it lands beside the bytes kept.
		err := proto.Errorf(proto.CodeProtocol, "asked to resume version %d of %q, the server sent version %d of other content", p.version, m.Name, m.Version)
		k.finishLocked(err)
		return err
	}
	k.id = m.TransferID
	k.size = m.Size
	if err := k.f.Truncate(int64(m.Size)); err != nil {
		k.finishLocked(err)
		return err
	}
	if k.written == m.Size {
		k.finishLocked(nil)
	}
	return nil
}

func (k *restoreSink) finishLocked(err error) {
	if k.closed {
		return
	}
	k.closed = true
	k.err = err
	close(k.done)
}

func (k *restoreSink) isClosed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.closed
}

// receive writes one decrypted chunk. keep, if not nil, takes p's buffer
// from the caller (it comes from k.bufs), to hold the chunk for hashing.
func (k *restoreSink) receive(off uint64, p []byte, keep func() []byte) error {
	n := uint64(len(p))
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	if off > k.size || n > k.size-off {
		k.mu.Unlock()
		return proto.Errorf(proto.CodeBadChunk, "server sent a chunk beyond the end of the file")
	}
	if err := k.got.Add(off, n); err != nil {
		k.mu.Unlock()
		return proto.Errorf(proto.CodeBadChunk, "server sent overlapping chunks: %v", err)
	}
	k.mu.Unlock()
	err := k.write(p, int64(off))
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.finishLocked(fmt.Errorf("writing %s: %w", k.f.Name(), err))
		return nil
	}
	k.wrote.Add(off, n) // cannot overlap: got claimed the range
	k.written += n
	if k.progress != nil {
		k.progress(int64(n))
	}
	if keep != nil && !k.closed && int64(off) >= k.hashed && len(k.held) < maxHeld && k.bufs.hold() {
		if b := keep(); b != nil {
			if k.held == nil {
				k.held = make(map[int64][]byte, maxHeld)
			}
			k.held[int64(off)] = b[:n]
		} else {
			k.bufs.unhold()
		}
	}
	if k.written == k.size {
		k.finishLocked(nil)
	} else if !k.hashing && !k.closed && k.hashableLocked() {
		k.hashing = true
		k.bg.Add(1)
		go k.hashAhead()
	}
	return nil
}

// write writes p at off: straight to the disk when the sink has a direct
// descriptor and p is aligned for it, through the page cache otherwise (the
// last chunk of a file, a chunk at an unaligned offset, a file system that
// refuses).
func (k *restoreSink) write(p []byte, off int64) error {
	if k.direct != nil && !k.noDirect.Load() && off%directAlign == 0 && len(p)%directAlign == 0 && aligned(p) {
		err := directWrite(k.direct, p, off)
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		// The file system wants another alignment after all: the page
		// cache it is, from here on, and the whole chunk again through
		// it (whatever of it the direct write may have written).
		k.noDirect.Store(true)
	}
	_, err := k.f.WriteAt(p, off)
	return err
}

// directWrite writes p at off through a direct descriptor (a variable, for
// tests of a file system that refuses).
var directWrite = func(f *os.File, p []byte, off int64) error {
	_, err := f.WriteAt(p, off)
	return err
}

// hashableLocked reports whether the hasher has work: the chunk after the
// hashed prefix is held, or the written prefix is a step ahead of it.
func (k *restoreSink) hashableLocked() bool {
	if _, ok := k.held[k.hashed]; ok {
		return true
	}
	return int64(k.wrote.Prefix())-k.hashed >= proto.HashStep
}

// hashNext hashes what follows the hashed prefix, at most up to end: the
// held chunk there, from memory, or else written bytes read back from the
// file up to the next held chunk. It reports false if nothing there is
// written. Called with hashMu held.
func (k *restoreSink) hashNext(end int64) (bool, error) {
	k.mu.Lock()
	at := k.hasher.Len()
	if b, ok := k.held[at]; ok && at+int64(len(b)) <= end {
		delete(k.held, at)
		k.mu.Unlock()
		k.hasher.Write(b)
		k.bufs.unhold()
		k.bufs.Put(b)
		k.mu.Lock()
		k.hashed = k.hasher.Len()
		k.mu.Unlock()
		return true, nil
	}
	stop := min(end, int64(k.wrote.Prefix()))
	for off := range k.held {
		if off > at && off < stop {
			stop = off
		}
	}
	k.mu.Unlock()
	if stop <= at {
		return false, nil
	}
	err := k.hasher.HashTo(k.f, stop)
	k.mu.Lock()
	k.hashed = k.hasher.Len()
	k.mu.Unlock()
	return true, err
}

// hashAhead hashes, and now and then syncs, the written prefix until it
// has nothing left to do or the sink closes; checksums does the rest.
func (k *restoreSink) hashAhead() {
	defer k.bg.Done()
	k.hashMu.Lock()
	defer k.hashMu.Unlock()
	if k.lastSync.IsZero() {
		k.lastSync = time.Now()
	}
	for {
		k.mu.Lock()
		if k.closed || !k.hashableLocked() {
			k.hashing = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		_, err := k.hashNext(math.MaxInt64)
		if err == nil && time.Since(k.lastSync) >= restoreSyncStep {
			// A failed sync must fail the restore: after it, a later
			// fsync may report success for pages that were never written.
			if err = k.f.Sync(); err != nil {
				err = fmt.Errorf("syncing %s: %w", k.f.Name(), err)
			}
			k.lastSync = time.Now()
		}
		if err != nil {
			k.mu.Lock()
			// Kept for checksums too: the last chunk may have closed the
			// sink already, and a failed fsync may not fail the next.
			k.bgErr = err
			k.finishLocked(err)
			k.hashing = false
			k.mu.Unlock()
			return
		}
	}
}

// checksums returns the cksum and SHA-256 of the whole file, once every
// byte is written: usually only the last chunks are left to hash.
func (k *restoreSink) checksums() (uint32, [32]byte, error) {
	k.hashMu.Lock()
	defer k.hashMu.Unlock()
	k.mu.Lock()
	err := k.bgErr
	k.mu.Unlock()
	if err != nil {
		return 0, [32]byte{}, err
	}
	for k.hasher.Len() < int64(k.size) {
		ok, err := k.hashNext(int64(k.size))
		if err != nil {
			return 0, [32]byte{}, err
		}
		if !ok {
			return 0, [32]byte{}, fmt.Errorf("%s: %d of %d bytes written", k.f.Name(), k.hasher.Len(), k.size)
		}
	}
	crc, sha := k.hasher.Sum()
	return crc, sha, nil
}

// dropHeld gives back the buffers of the chunks held for hashing, once no
// chunk can arrive: they are on disk, and a resume reads them back.
func (k *restoreSink) dropHeld() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for off, b := range k.held {
		k.bufs.unhold()
		k.bufs.Put(b)
		delete(k.held, off)
	}
}

// RestoreOptions says what to restore and where.
type RestoreOptions struct {
	Name      string // a stored file, or a directory prefix
	Version   int    // 0: latest; only for a single file
	Output    string // destination; "" for the name's last element in the current directory
	Overwrite bool   // replace existing files
}

// RestoreResult counts what a restore did.
type RestoreResult struct {
	Files    int
	Bytes    int64 // the size of the files restored
	Received int64 // bytes received in all, resent ones included
	Failed   int
	FirstErr error // the first failure, for the exit message
}

// restoreTarget is one file to restore.
type restoreTarget struct {
	name    string
	version int
	size    int64
	dest    string
	part    *partialRestore // what an interrupted attempt left, or nil
}

// planRestore lists what name covers and where each file goes.
func (s *Session) planRestore(ctx context.Context, o RestoreOptions) ([]*restoreTarget, error) {
	entries, err := s.List(ctx, o.Name, o.Version != 0)
	if err != nil {
		return nil, err
	}
	if o.Version != 0 {
		entries, err = pickVersion(entries, o.Name, o.Version)
		if err != nil {
			return nil, err
		}
	}
	out := o.Output
	if out == "" {
		out = path.Base(o.Name)
	}
	var targets []*restoreTarget
	for _, e := range entries {
		var rel string
		switch {
		case e.Name == o.Name:
			rel = ""
		case strings.HasPrefix(e.Name, o.Name+"/"):
			rel = strings.TrimPrefix(e.Name, o.Name+"/")
		default:
			continue // the server listed something it was not asked for
		}
		if rel != "" && !filepath.IsLocal(filepath.FromSlash(rel)) {
			return nil, fmt.Errorf("the server listed %q, which would land outside %s; refusing", e.Name, out)
		}
		dest := out
		if rel != "" {
			dest = filepath.Join(out, filepath.FromSlash(rel))
		}
		t := &restoreTarget{name: e.Name, size: int64(e.Size), dest: dest}
		if e.Name == o.Name {
			t.version = o.Version
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("nothing named %q is stored; see qbackup ls", o.Name)
	}
	if o.Version != 0 && (len(targets) != 1 || targets[0].name != o.Name) {
		return nil, fmt.Errorf("--version needs the name of one file, and %q is a directory", o.Name)
	}
	return targets, nil
}

// restoreFile fetches one file, verifies it and moves it into place,
// retrying a transfer whose checksum does not match up to maxResends times.
// With keep, a restore cut off by the end of the session leaves t.part
// for the next session to resume.
func (s *Session) restoreFile(ctx context.Context, t *restoreTarget, overwrite, keep bool, fp FileProgress, received *atomic.Int64) (int64, error) {
	if t.part == nil {
		if !overwrite {
			if _, err := os.Lstat(t.dest); err == nil {
				return 0, fmt.Errorf("%s already exists; use --overwrite to replace it, or -o to restore elsewhere", t.dest)
			}
		}
		if err := os.MkdirAll(filepath.Dir(t.dest), 0o755); err != nil {
			return 0, err
		}
	}
	var lastErr error
	for attempt := 0; attempt <= maxResends; {
		n, err := s.restoreOnce(ctx, t, keep, fp, received)
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, errResumeRefused):
			fp.Retry() // t.part is gone: start afresh, no attempt lost
			continue
		case !errors.Is(err, errRestoreMismatch):
			return 0, err
		}
		lastErr = err
		if attempt++; attempt <= maxResends {
			fp.Retry()
		}
	}
	return 0, fmt.Errorf("%w after %d attempts", lastErr, maxResends+1)
}

var (
	errRestoreMismatch = errors.New("the restored bytes do not match the stored checksum")
	errResumeRefused   = errors.New("the server cannot resume this restore")
)

// lostToNetwork reports whether a session that ended with err (nil: it
// has not) was lost the way a resume is for: not closed by the server for
// a protocol error, which is how a server that does not know RestoreResume
// answers one. Resuming again would only end the next session too.
func lostToNetwork(err error) bool {
	var pe *proto.Error
	return err != nil && !(errors.As(err, &pe) && pe.Code == proto.CodeProtocol)
}

// restoreOnce makes one attempt at t: it resumes t.part if there is one,
// and it leaves one in t.part (with keep) if the session ends under it
// after the server has described the file. It counts the bytes it
// receives in received.
func (s *Session) restoreOnce(ctx context.Context, t *restoreTarget, keep bool, fp FileProgress, received *atomic.Int64) (n int64, err error) {
	progress := func(n int64) {
		fp.Add(n)
		received.Add(n)
	}
	var sink *restoreSink
	var req proto.Message
	c := s.newCall()
	p := t.part
	t.part = nil
	resuming := p != nil
	if resuming {
		req = &proto.RestoreResume{Req: c.req, Name: t.name, Version: p.version, SHA256: p.sha, Have: p.haveRanges()}
		sink = resumeSink(p, s.restoreBufs, progress)
		fp.Add(int64(p.have.Total()))
	} else {
		var rnd [6]byte
		rand.Read(rnd[:])
		tmp := filepath.Join(filepath.Dir(t.dest), "."+filepath.Base(t.dest)+".qbackup-"+hex.EncodeToString(rnd[:]))
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			s.endCall(c)
			return 0, err
		}
		p = &partialRestore{tmp: tmp, f: f, direct: openDirect(f)}
		sink = newRestoreSink(f, p.direct, s.restoreBufs, progress)
		req = &proto.RestoreRequest{Req: c.req, Name: t.name, Version: uint32(t.version)}
	}
	f, tmp := p.f, p.tmp
	var ready *proto.RestoreReady
	s.mu.Lock()
	s.pending[c.req] = sink
	s.mu.Unlock()
	verified := false
	defer func() {
		s.mu.Lock()
		delete(s.pending, c.req)
		s.mu.Unlock()
		sink.mu.Lock()
		complete := sink.written == sink.size
		sink.finishLocked(errSessionClosed)
		have := sink.wrote.Clone()
		sound := sink.err == nil || sink.err == errSessionClosed // no write or sync failed
		sink.mu.Unlock()
		sink.bg.Wait() // the hasher reads f, which closes next
		sink.dropHeld()
		// endCall also knows a transfer whose RestoreReady we never read.
		if xfer := s.endCall(c); xfer != 0 {
			status := uint8(0)
			if !verified {
				status = 1
			}
			s.send(&proto.RestoreDone{Xfer: xfer, Status: status})
			if complete {
				s.forgetSink(xfer) // every byte arrived: no chunk can follow
			}
		}
		if err != nil && keep && sound && lostToNetwork(s.Err()) && ctx.Err() == nil && (ready != nil || resuming) {
			// The session ended under us: keep what arrived for the next.
			// (A resume cut off before its RestoreReady keeps what it had.)
			p.hasher, p.have = sink.hasher, have
			if ready != nil {
				p.version, p.size, p.sha = ready.Version, ready.Size, ready.SHA256
			}
			t.part = p
			return
		}
		p.close()
		os.Remove(tmp) // gone already after a successful rename
	}()
	if err := s.send(req); err != nil {
		return 0, err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		var pe *proto.Error
		if resuming && errors.As(err, &pe) && pe.Code == proto.CodeNotFound {
			return 0, fmt.Errorf("%w: %v", errResumeRefused, err)
		}
		return 0, err
	}
	var ok bool
	ready, ok = m.(*proto.RestoreReady)
	if !ok {
		return 0, proto.Errorf(proto.CodeProtocol, "server answered a restore with %v", m.Type())
	}
	if ready.Name != t.name {
		return 0, proto.Errorf(proto.CodeProtocol, "asked for %q, server sent %q", t.name, ready.Name)
	}
	select {
	case <-sink.done:
	case m := <-c.ch:
		if e, ok := m.(*proto.ErrorMessage); ok {
			return 0, e.Err()
		}
		return 0, proto.Errorf(proto.CodeProtocol, "server sent %v during a restore", m.Type())
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	case <-s.ctx.Done():
		return 0, s.Err()
	}
	if sink.err != nil {
		return 0, sink.err
	}
	crc, sha, err := sink.checksums()
	if err != nil {
		return 0, err
	}
	if crc != ready.CRC || sha != ready.SHA256 {
		return 0, fmt.Errorf("%s: %w (cksum %d, stored %d)", t.name, errRestoreMismatch, crc, ready.CRC)
	}
	if err := f.Chmod(os.FileMode(ready.Mode) & os.ModePerm); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if err := p.close(); err != nil {
		return 0, err
	}
	mtime := time.Unix(0, ready.ModTime)
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, t.dest); err != nil {
		return 0, err
	}
	if err := syncDir(filepath.Dir(t.dest)); err != nil {
		return 0, err
	}
	verified = true
	return int64(ready.Size), nil
}

// Restore fetches a stored file, or every file under a directory name, and
// writes each atomically after checking its checksums.
func (s *Session) Restore(ctx context.Context, o RestoreOptions, rep Reporter) (*RestoreResult, error) {
	targets, err := s.planRestore(ctx, o)
	if err != nil {
		return nil, err
	}
	startRestore(targets, rep)
	res := &RestoreResult{}
	s.restoreTargets(ctx, targets, o.Overwrite, rep, res, false)
	return res, nil
}

// RestoreResilient restores like Session.Restore, but when the connection
// is lost it reconnects with backoff and resumes: files not begun yet are
// asked for again, and each file under way for the ranges it lacks (the
// chunks being written when the connection ended come again).
func (c *Client) RestoreResilient(ctx context.Context, o RestoreOptions, ro ReconnectOptions, rep Reporter) (*RestoreResult, error) {
	s, _, err := c.Connect(ctx, "", "")
	if err != nil {
		return nil, err
	}
	targets, err := s.planRestore(ctx, o)
	if err != nil {
		s.Close()
		return nil, err
	}
	startRestore(targets, rep)
	res := &RestoreResult{}
	reconnects := 0
	for {
		lost := s.restoreTargets(ctx, targets, o.Overwrite, rep, res, reconnects < ro.Attempts)
		lastErr := s.Err()
		s.Close()
		if len(lost) == 0 {
			return res, nil
		}
		targets = lost
		if s, err = c.redial(ctx, ro, &reconnects, lastErr, rep, plural(len(lost), "file")); err != nil {
			for _, t := range lost {
				t.dropPart()
				res.fail(fmt.Errorf("%s: %w", t.name, err))
			}
			return res, nil
		}
	}
}

func startRestore(targets []*restoreTarget, rep Reporter) {
	var total int64
	for _, t := range targets {
		total += t.size
	}
	rep.Start(len(targets), total)
}

func (r *RestoreResult) fail(err error) {
	r.Failed++
	if r.FirstErr == nil {
		r.FirstErr = err
	}
}

// restoreTargets restores targets over the session, 8 at a time, and adds
// the outcomes to res. With keepLost, files that failed because the
// session itself ended are not counted but returned, with what arrived of
// them, to be resumed over a new session.
func (s *Session) restoreTargets(ctx context.Context, targets []*restoreTarget, overwrite bool, rep Reporter, res *RestoreResult, keepLost bool) (lost []*restoreTarget) {
	var mu sync.Mutex
	next := make(chan *restoreTarget)
	var wg sync.WaitGroup
	var received atomic.Int64
	defer func() { res.Received += received.Load() }()
	for range min(8, len(targets)) {
		wg.Go(func() {
			for t := range next {
				fp := rep.File(t.name, t.size)
				n, err := s.restoreFile(ctx, t, overwrite, keepLost, fp, &received)
				mu.Lock()
				switch {
				case err != nil && keepLost && s.Err() != nil && ctx.Err() == nil:
					lost = append(lost, t)
					fp.Done("interrupted", nil)
				case err != nil:
					t.dropPart() // kept just as ctx ended, say
					res.fail(fmt.Errorf("%s: %w", t.name, err))
					fp.Done("", err)
				default:
					res.Files++
					res.Bytes += n
					fp.Done("restored", nil)
				}
				mu.Unlock()
			}
		})
	}
	handed := 0
feed:
	for _, t := range targets {
		if keepLost && s.Err() != nil {
			break // the session is gone: the rest goes to the next one
		}
		select {
		case next <- t:
			handed++
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if rest := targets[handed:]; len(rest) > 0 {
		if keepLost && s.Err() != nil && ctx.Err() == nil {
			lost = append(lost, rest...)
		} else {
			for _, t := range rest {
				t.dropPart()
			}
			res.Failed += len(rest)
			if res.FirstErr == nil {
				res.FirstErr = cmp.Or(context.Cause(ctx), s.Err())
			}
		}
	}
	return lost
}

// pickVersion keeps the entry of one version of name from a listing of
// all versions.
func pickVersion(all []proto.ListEntry, name string, version int) ([]proto.ListEntry, error) {
	var latest uint32
	sawDir := false
	for _, e := range all {
		if e.Name != name {
			sawDir = true
			continue
		}
		if int(e.Version) == version {
			return []proto.ListEntry{e}, nil
		}
		latest = max(latest, e.Version)
	}
	switch {
	case latest > 0:
		return nil, fmt.Errorf("%s has no version %d; its versions are 1 to %d (see qbackup ls --versions %s)", name, version, latest, name)
	case sawDir:
		return nil, fmt.Errorf("--version needs the name of one file, and %q is a directory", name)
	}
	return nil, nil // nothing at all: planRestore says so
}

package quiccli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/qbackup/qbackup/proto"
)

// restoreSink receives one file from the server into a temporary file
// beside its destination.
type restoreSink struct {
	f        *os.File
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

	// The file is hashed, and flushed to disk, as it arrives: a background
	// hasher reads back the written prefix as it grows (from the page
	// cache) and syncs the file about once a second, so that once the last
	// chunk is written little is left to read, hash or flush. hashMu is
	// held by whoever hashes; hashing, under mu, says the hasher runs; bg
	// tracks it, so that the file outlives it.
	hashMu   sync.Mutex
	hasher   proto.FileHasher
	lastSync time.Time // guarded by hashMu
	hashing  bool
	hashed   int64 // hasher.Len(), guarded by mu
	bg       sync.WaitGroup
}

// restoreSyncStep is how often the background hasher flushes what was
// written (it starts once the written prefix is proto.HashStep ahead).
const restoreSyncStep = time.Second

func newRestoreSink(f *os.File, progress func(int64)) *restoreSink {
	return &restoreSink{f: f, progress: progress, done: make(chan struct{})}
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
	k.id = m.TransferID
	k.size = m.Size
	if err := k.f.Truncate(int64(m.Size)); err != nil {
		k.finishLocked(err)
		return err
	}
	if m.Size == 0 {
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

// receive writes one decrypted chunk.
func (k *restoreSink) receive(off uint64, p []byte) error {
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
	_, err := k.f.WriteAt(p, int64(off))
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
	if k.written == k.size {
		k.finishLocked(nil)
	} else if !k.hashing && !k.closed && int64(k.wrote.Prefix())-k.hashed >= proto.HashStep {
		k.hashing = true
		k.bg.Add(1)
		go k.hashAhead()
	}
	return nil
}

// hashAhead hashes, and now and then syncs, the written prefix until it
// catches up or the sink closes; checksums does the rest.
func (k *restoreSink) hashAhead() {
	defer k.bg.Done()
	k.hashMu.Lock()
	defer k.hashMu.Unlock()
	if k.lastSync.IsZero() {
		k.lastSync = time.Now()
	}
	for {
		k.mu.Lock()
		end := int64(k.wrote.Prefix())
		if k.closed || end <= k.hashed {
			k.hashing = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		err := k.hasher.HashTo(k.f, end)
		if err == nil && time.Since(k.lastSync) >= restoreSyncStep {
			// A failed sync must fail the restore: after it, a later
			// fsync may report success for pages that were never written.
			if err = k.f.Sync(); err != nil {
				err = fmt.Errorf("syncing %s: %w", k.f.Name(), err)
			}
			k.lastSync = time.Now()
		}
		k.mu.Lock()
		k.hashed = k.hasher.Len()
		if err != nil {
			k.finishLocked(err)
			k.hashing = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
	}
}

// checksums returns the cksum and SHA-256 of the whole file, once every
// byte is written: usually only the last steps are left to read.
func (k *restoreSink) checksums() (uint32, [32]byte, error) {
	k.hashMu.Lock()
	defer k.hashMu.Unlock()
	if err := k.hasher.HashTo(k.f, int64(k.size)); err != nil {
		return 0, [32]byte{}, err
	}
	crc, sha := k.hasher.Sum()
	return crc, sha, nil
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
	Bytes    int64
	Failed   int
	FirstErr error // the first failure, for the exit message
}

// restoreTarget is one file to restore.
type restoreTarget struct {
	name    string
	version int
	size    int64
	dest    string
}

// planRestore lists what name covers and where each file goes.
func (s *Session) planRestore(ctx context.Context, o RestoreOptions) ([]restoreTarget, error) {
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
	var targets []restoreTarget
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
		t := restoreTarget{name: e.Name, size: int64(e.Size), dest: dest}
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
func (s *Session) restoreFile(ctx context.Context, t restoreTarget, overwrite bool, fp FileProgress) (int64, error) {
	if !overwrite {
		if _, err := os.Lstat(t.dest); err == nil {
			return 0, fmt.Errorf("%s already exists; use --overwrite to replace it, or -o to restore elsewhere", t.dest)
		}
	}
	if err := os.MkdirAll(filepath.Dir(t.dest), 0o755); err != nil {
		return 0, err
	}
	var lastErr error
	for attempt := 0; attempt <= maxResends; attempt++ {
		if attempt > 0 {
			fp.Retry()
		}
		n, err := s.restoreOnce(ctx, t, fp)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, errRestoreMismatch) {
			return 0, err
		}
		lastErr = err
	}
	return 0, fmt.Errorf("%w after %d attempts", lastErr, maxResends+1)
}

var errRestoreMismatch = errors.New("the restored bytes do not match the stored checksum")

func (s *Session) restoreOnce(ctx context.Context, t restoreTarget, fp FileProgress) (int64, error) {
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(t.dest), "."+filepath.Base(t.dest)+".qbackup-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer func() {
		f.Close()
		os.Remove(tmp) // gone already after a successful rename
	}()
	sink := newRestoreSink(f, fp.Add)
	c := s.newCall()
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
		sink.mu.Unlock()
		sink.bg.Wait() // the hasher reads f, which closes next
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
	}()
	if err := s.send(&proto.RestoreRequest{Req: c.req, Name: t.name, Version: uint32(t.version)}); err != nil {
		return 0, err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		return 0, err
	}
	ready, ok := m.(*proto.RestoreReady)
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
	if err := f.Close(); err != nil {
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
	var total int64
	for _, t := range targets {
		total += t.size
	}
	rep.Start(len(targets), total)
	res := &RestoreResult{}
	var mu sync.Mutex
	next := make(chan restoreTarget)
	var wg sync.WaitGroup
	for range min(8, len(targets)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range next {
				fp := rep.File(t.name, t.size)
				n, err := s.restoreFile(ctx, t, o.Overwrite, fp)
				if err == nil {
					fp.Done("restored", nil)
				} else {
					fp.Done("", err)
				}
				mu.Lock()
				if err != nil {
					res.Failed++
					if res.FirstErr == nil {
						res.FirstErr = fmt.Errorf("%s: %w", t.name, err)
					}
				} else {
					res.Files++
					res.Bytes += n
				}
				mu.Unlock()
			}
		}()
	}
	for _, t := range targets {
		select {
		case next <- t:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	if left := len(targets) - res.Files - res.Failed; left > 0 {
		res.Failed += left
		if res.FirstErr == nil {
			res.FirstErr = context.Cause(ctx)
		}
	}
	return res, nil
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

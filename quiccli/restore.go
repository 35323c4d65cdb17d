package quiccli

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
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

	// sparse says the file had holes: a chunk of zeros is not written,
	// and stays a hole of the file (sized, never allocated, at bind).
	sparse bool
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
	root    *os.Root // the restore's root, which tmp is relative to
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
		p.root.Remove(p.tmp)
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
	var err error
	if !k.sparse || !allZero(p) {
		err = k.write(p, int64(off))
	}
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

// allZero reports whether p holds only zero bytes.
func allZero(p []byte) bool {
	for len(p) >= len(zeroBlock) {
		if !bytes.Equal(p[:len(zeroBlock)], zeroBlock[:]) {
			return false
		}
		p = p[len(zeroBlock):]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

var zeroBlock [4096]byte

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

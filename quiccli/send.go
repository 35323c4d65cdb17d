package quiccli

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mathrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// maxResends is how many times a file is sent again after a checksum
// mismatch before it is reported as failed: four attempts in all.
const maxResends = 3

// SendOptions says what to send and how.
type SendOptions struct {
	Paths    []string // files and directories, recursively; every kind of entry
	Checksum bool     // hash files first and compare content, not size and mtime
	Files    int      // files larger than a chunk in flight at once (0: 8); smaller ones go 16 times as many
	// Connections spreads the chunks of each file of two chunks or more
	// over this many connections, each with its own session key and
	// congestion window (SendResilient only; 0 or 1: one). With
	// AutoConnections, connections are added while the goodput still
	// rises, up to Connections (0: MaxConnections).
	Connections     int
	AutoConnections bool

	// testHookChunkRead, if set, runs after each chunk is read from the
	// file being sent (tests change the file there).
	testHookChunkRead func(name string, attempt int, off int64)
	// testHookCorrupt, if set, sees each chunk after it is hashed and
	// before it is sent (tests damage it there).
	testHookCorrupt func(name string, attempt int, b []byte)
	// testHookRoutes, if set, sees the routes of each file's chunks.
	testHookRoutes func(name string, rs []*route)
}

// SendResult counts what a send did, by entry (file, directory, link...).
type SendResult struct {
	Sent      int // entries stored (a new version, or identical content confirmed)
	Unchanged int // entries the server already held; nothing sent
	Failed    int // entries not stored
	// Changed counts entries stored as they were read although they
	// changed while being read (counted in Sent too).
	Changed int
	// Incomplete counts entries stored without part of their metadata
	// (an extended attribute too large, or unreadable), or that vanished
	// before they could be read.
	Incomplete int
	// Interrupted and NotStarted count, when the send was cut short, the
	// entries under way (kept by the server for resume) and those never
	// begun.
	Interrupted, NotStarted int
	Bytes                   int64 // content bytes sent, resends included
	Elapsed                 time.Duration
	FirstErr                error // the first failure, for the exit message
}

// OK reports whether every entry is stored or unchanged.
func (r *SendResult) OK() bool { return r.Failed == 0 && r.Interrupted == 0 && r.NotStarted == 0 }

// sendItem is one local entry and the name it is stored under.
type sendItem struct {
	path   string
	name   string
	size   int64 // at the walk; for progress and the choice of pool
	kind   proto.Kind
	follow bool // named on the command line: a symbolic link there is followed
}

// collect walks the paths and returns every entry under them (files,
// directories, symbolic links, special files), with their stored names:
// the path relative to the argument's parent, with '/' separators ("send
// /home/me/docs" stores "docs" and "docs/a.txt"). A symbolic link named
// on the command line is followed; one found in a directory is backed up
// as a link.
func collect(paths []string) ([]sendItem, []error) {
	var items []sendItem
	var errs []error
	seen := map[string]string{}
	add := func(it sendItem) {
		if prev, ok := seen[it.name]; ok {
			errs = append(errs, fmt.Errorf("%s and %s would both be stored as %q; send them separately", prev, it.path, proto.Quote(it.name)))
			return
		}
		if err := proto.ValidateName(it.name); err != nil {
			errs = append(errs, fmt.Errorf("cannot back up %s: its stored name is not valid: %v", it.path, unwrapReason(err)))
			return
		}
		seen[it.name] = it.path
		items = append(items, it)
	}
	for _, arg := range paths {
		abs, err := filepath.Abs(arg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		base := filepath.Base(abs)
		if base == string(filepath.Separator) || base == "." {
			errs = append(errs, fmt.Errorf("cannot send %s as a whole: name the directories below it", arg))
			continue
		}
		fi, err := os.Stat(arg) // a symlink named on the command line is followed
		if err != nil {
			errs = append(errs, fmt.Errorf("cannot read %s: %v", arg, unwrapPathError(err)))
			continue
		}
		kind, _ := kindOf(fi.Mode())
		if kind != proto.KindDir {
			add(sendItem{path: arg, name: base, size: fi.Size(), kind: kind, follow: true})
			continue
		}
		err = filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				errs = append(errs, fmt.Errorf("cannot read %s: %v", p, unwrapPathError(err)))
				if d != nil && d.IsDir() && p != arg {
					return fs.SkipDir
				}
				return nil
			}
			rel, err := filepath.Rel(arg, p)
			if err != nil {
				return err
			}
			it := sendItem{path: p, name: base, follow: p == arg}
			if rel != "." {
				it.name = base + "/" + filepath.ToSlash(rel)
			}
			var ok bool
			if it.kind, ok = kindOf(d.Type()); !ok {
				errs = append(errs, fmt.Errorf("cannot back up %s: a kind of file this system should not have (%v)", p, d.Type()))
				return nil
			}
			if it.kind == proto.KindFile {
				info, err := d.Info()
				if err != nil {
					errs = append(errs, fmt.Errorf("cannot read %s: %v", p, unwrapPathError(err)))
					return nil
				}
				it.size = info.Size()
			}
			add(it)
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].name < items[j].name })
	return items, errs
}

// unwrapReason is a proto.ValidateName error without its "invalid name:"
// prefix.
func unwrapReason(err error) string {
	return strings.TrimPrefix(err.Error(), proto.ErrInvalidName.Error()+": ")
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Send stores the files under opts.Paths, several at a time, each as
// encrypted chunks spread over the session's data streams.
func (s *Session) Send(ctx context.Context, opts SendOptions, rep Reporter) *SendResult {
	start := time.Now()
	res := &SendResult{}
	items := collectReported(opts.Paths, rep, res)
	s.sendItems(ctx, items, opts, rep, res, false)
	res.Elapsed = time.Since(start)
	return res
}

// collectReported walks the paths, reports what it cannot read, and
// announces the total.
func collectReported(paths []string, rep Reporter, res *SendResult) []sendItem {
	items, errs := collect(paths)
	for _, err := range errs {
		rep.Warn("%v", err)
		res.fail(err)
	}
	var total int64
	for _, it := range items {
		total += it.size
	}
	rep.Start(len(items), total)
	return items
}

func (r *SendResult) fail(err error) {
	r.Failed++
	if r.FirstErr == nil {
		r.FirstErr = err
	}
}

// sendItems sends items over the session and adds the outcomes to res.
// With keepLost, files that failed because the session itself ended are
// not counted but returned, to be sent again over a new session.
func (s *Session) sendItems(ctx context.Context, items []sendItem, opts SendOptions, rep Reporter, res *SendResult, keepLost bool) (lost []sendItem) {
	workers := opts.Files
	if workers <= 0 {
		workers = 8
	}
	// Files of at most one chunk go through a pool of their own, many
	// more at once: each is a few round trips and a share of the server's
	// group commit, so only many in flight keep the link and the server's
	// disk busy. Larger files share the link and read from disk in
	// parallel, so a few at a time is best.
	smallWorkers := min(smallPerLarge*workers, maxSmallWorkers)
	chunk := int64(s.chunkSize)
	var nSmall, nLarge int
	for _, it := range items {
		if it.size <= chunk {
			nSmall++
		} else {
			nLarge++
		}
	}
	var mu sync.Mutex
	large, small := make(chan sendItem), make(chan sendItem)
	var wg sync.WaitGroup
	var bytes atomic.Int64
	work := func(next chan sendItem) {
		defer wg.Done()
		for it := range next {
			fp := rep.File(it.name, it.size)
			st, err := s.sendFile(ctx, it, opts, fp, &bytes)
			mu.Lock()
			for _, w := range st.Warnings {
				rep.Warn("%s: %s", proto.Quote(it.name), w)
			}
			switch {
			case err != nil && keepLost && ctx.Err() == nil && s.endedBy(err):
				lost = append(lost, it)
				fp.Done("interrupted", nil)
			case err != nil && ctx.Err() != nil:
				res.Interrupted++ // the server keeps what arrived
				fp.Done("interrupted", nil)
			case errors.Is(err, errVanished):
				res.Incomplete++
				fp.Done("vanished", nil)
			case err != nil:
				res.fail(fmt.Errorf("%s: %w", proto.Quote(it.name), err))
				fp.Done("", err)
			case st.Unchanged:
				res.Unchanged++
				fp.Done(describe(st), nil)
			default:
				res.Sent++
				if st.Changed {
					res.Changed++
				}
				fp.Done(describe(st), nil)
			}
			if err == nil && len(st.Warnings) > 0 {
				res.Incomplete++
			}
			mu.Unlock()
		}
	}
	for range min(workers, nLarge) {
		wg.Add(1)
		go work(large)
	}
	for range min(smallWorkers, nSmall) {
		wg.Add(1)
		go work(small)
	}
	handed := 0
feed:
	for _, it := range items {
		if keepLost && s.Err() != nil {
			break // the session is gone: the rest goes to the next one
		}
		next := large
		if it.size <= chunk {
			next = small
		}
		select {
		case next <- it:
			handed++
		case <-ctx.Done():
			break feed
		}
	}
	close(large)
	close(small)
	wg.Wait()
	if rest := items[handed:]; len(rest) > 0 {
		switch {
		case keepLost && s.Err() != nil && ctx.Err() == nil:
			lost = append(lost, rest...)
		case ctx.Err() != nil:
			res.NotStarted += len(rest)
		default:
			res.Failed += len(rest)
			if res.FirstErr == nil {
				res.FirstErr = s.Err()
			}
		}
	}
	res.Bytes += bytes.Load()
	return lost
}

// How many small files (at most one chunk) are in flight for each large
// one allowed, and at most: the server allows 256 transfers per session.
const (
	smallPerLarge   = 16
	maxSmallWorkers = 192
)

// ReconnectOptions bound how a send carries on after its connection is
// lost: it reconnects with exponential backoff and resumes.
type ReconnectOptions struct {
	Attempts int           // reconnections at most (0: none)
	MaxWait  time.Duration // longest wait between attempts (0: 30 s)
}

// SendResilient sends like Session.Send, but when the connection is lost
// (the network changed or failed, the server restarted) it reconnects
// with backoff and resumes the files that were under way, sending only
// what the server does not have yet.
func (c *Client) SendResilient(ctx context.Context, server, name string, opts SendOptions, ro ReconnectOptions, rep Reporter) (*SendResult, error) {
	start := time.Now()
	res := &SendResult{}
	// The walk first: a session that waits for a long one is idle, and a
	// server closes idle sessions.
	items := collectReported(opts.Paths, rep, res)
	reconnects := 0
	s, err := c.connectRetrying(ctx, server, name, ro, &reconnects, rep)
	if err != nil {
		return nil, err
	}
	conns := opts.Connections
	var autoDone chan int
	var autoStop chan struct{}
	startAuto := func(s *Session) {
		limit := opts.Connections
		if limit <= 0 || limit > MaxConnections {
			limit = MaxConnections
		}
		autoDone, autoStop = make(chan int, 1), make(chan struct{})
		go func() { autoDone <- c.autoConnections(ctx, s, limit, autoStop) }()
	}
	stopAuto := func() {
		if autoDone != nil {
			close(autoStop)
			conns = <-autoDone
			autoDone = nil
			c.notice("auto: sent over %s", plural(conns, "connection"))
		}
	}
	switch {
	case opts.AutoConnections:
		startAuto(s)
	case conns > 1:
		c.connectPeers(ctx, s, conns)
	}
	for {
		lost := s.sendItems(ctx, items, opts, rep, res, reconnects < ro.Attempts)
		lastErr := s.Err()
		if ctx.Err() != nil {
			// Interrupted: end at once rather than drain queued chunks over
			// a slow link; the server keeps what arrived for resume.
			s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "interrupted")
			s.abortPeers()
		}
		stopAuto() // before the peers close: it may be adding one
		s.closePeers()
		s.Close()
		if len(lost) == 0 {
			break
		}
		items = lost
		if s, err = c.redial(ctx, ro, &reconnects, lastErr, rep, plural(len(items), "file")); err != nil {
			for _, it := range items {
				res.fail(fmt.Errorf("%s: %w", it.name, err))
			}
			break
		}
		if conns > 1 {
			c.connectPeers(ctx, s, conns) // as many as auto had found
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// connectRetrying opens the first session of a send or restore, retrying
// like redial when the server cannot be reached (counting in *n), but not
// when retrying cannot help (the identity or the server's certificate is
// in question, registration refused).
func (c *Client) connectRetrying(ctx context.Context, server, name string, ro ReconnectOptions, n *int, rep Reporter) (*Session, error) {
	s, _, err := c.Connect(ctx, server, name)
	if err == nil || !retryable(err) {
		return s, err
	}
	return c.redial(ctx, ro, n, err, rep, "")
}

// retryable reports whether a failure to connect may go away by itself:
// the server did not answer, or refused the session for now.
func retryable(err error) bool {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe.Code == proto.CodeShutdown || pe.Code == proto.CodeInternal || pe.Code == proto.CodeLimit
	}
	var ne net.Error
	var ue *unreachableError
	return errors.As(err, &ue) || (errors.As(err, &ne) && ne.Timeout()) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}

// redial opens a new session after the last one was lost (lastErr), with
// exponential backoff, counting reconnections in *n. It gives up, with
// the error to fail the rest with, once ro.Attempts reconnections are
// used up, the error cannot be fixed by trying again, or ctx ends. what
// says, for the warning, what is left to resume.
func (c *Client) redial(ctx context.Context, ro ReconnectOptions, n *int, lastErr error, rep Reporter, what string) (*Session, error) {
	maxWait := ro.MaxWait
	if maxWait <= 0 {
		maxWait = 30 * time.Second
	}
	for wait := time.Second; ; wait = min(2*wait, maxWait) {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if *n >= ro.Attempts || permanent(lastErr) {
			return nil, lastErr
		}
		*n++
		if what == "" {
			rep.Warn("cannot reach the server (%v); trying again in %v (attempt %d of %d)", lastErr, wait, *n, ro.Attempts)
		} else {
			rep.Warn("connection lost (%v); reconnecting in %v to resume %s (attempt %d of %d)",
				lastErr, wait, what, *n, ro.Attempts)
		}
		select {
		case <-time.After(jitter(wait)):
		case <-ctx.Done():
			continue
		}
		s, _, err := c.Connect(ctx, "", "")
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
}

// jitter spreads reconnections of many clients: 75% to 125% of d.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + time.Duration(mathrand.Int64N(int64(d)/2+1))
}

// permanent reports whether a failure to connect will not go away by
// trying again: the server's identity or ours is in question.
func permanent(err error) bool {
	var cc *CertChangedError
	var pe *permanentError
	return errors.As(err, &cc) || errors.As(err, &pe)
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// FileStatus is how an entry ended.
type FileStatus struct {
	Unchanged bool   // the server held this content already
	Identical bool   // sent, and found identical to the latest version
	Version   uint32 // the version holding the content
	Attempts  int    // how many times it was sent
	Resumed   int64  // bytes the server already had from an interrupted send
	// Changed says the file changed while it was read: what was read is
	// stored, and its checksums describe it.
	Changed bool
	// Warnings say what of the entry's metadata is not stored.
	Warnings []string
}

// errMismatch means one attempt's checksums did not match: the attempt
// was discarded and may be retried.
var errMismatch = errors.New("checksum mismatch")

// errVanished means the entry was gone by the time it was read.
var errVanished = errors.New("vanished before it was read")

// errReread means an attempt must start over with a fresh look at the
// file: it shrank while it was read, or it changed under a resumed upload
// (whose bytes from before the change the server holds).
var errReread = errors.New("changed while it was read")

func (s *Session) sendFile(ctx context.Context, it sendItem, opts SendOptions, fp FileProgress, bytes *atomic.Int64) (FileStatus, error) {
	var lastErr error
	rereads, mismatches := 0, 0
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			fp.Retry()
		}
		// After one reread, a file that shrinks again is padded with
		// zeros to the size it announced, as tar does: the stored copy
		// then says what was read, marked as changed.
		st, err := s.sendAttempt(ctx, it, opts, attempt, rereads > 0, fp, bytes)
		st.Attempts = attempt
		switch {
		case err == nil:
			st.Changed = st.Changed || rereads > 0
			return st, nil
		case errors.Is(err, errReread) && rereads == 0:
			rereads++
		case errors.Is(err, errMismatch) && mismatches < maxResends:
			mismatches++
			lastErr = err
		case errors.Is(err, errMismatch):
			return FileStatus{Attempts: attempt}, fmt.Errorf("%w on all %d attempts (%v); it was not stored", errMismatch, maxResends+1, errors.Unwrap(lastErr))
		default:
			return st, err
		}
	}
}

// opened is an entry opened for one attempt at sending it.
type opened struct {
	kind     proto.Kind
	size     int64
	mtime    time.Time
	mode     uint32
	meta     []byte
	warnings []string
	r        io.ReaderAt // the content: the file, or a symbolic link's target
	f        *os.File    // the file, for a file
	fi       fs.FileInfo // f's, as opened
}

func (o *opened) close() {
	if o.f != nil {
		o.f.Close()
	}
}

// openEntry opens it for reading and reads its metadata.
func openEntry(it sendItem) (*opened, error) {
	o := &opened{}
	if it.kind == proto.KindFile {
		// The usual case, in as few calls as can be: open, then fstat.
		if o, err := openFile(it); err == nil || !errors.Is(err, errNotAFile) {
			return o, err
		}
	}
	stat := os.Lstat
	if it.follow {
		stat = os.Stat
	}
	fi, err := stat(it.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errVanished
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read: %v", unwrapPathError(err))
	}
	var ok bool
	if o.kind, ok = kindOf(fi.Mode()); !ok {
		return nil, fmt.Errorf("cannot back up a file of mode %v", fi.Mode())
	}
	switch o.kind {
	case proto.KindFile: // it was something else at the walk
		it.kind = proto.KindFile
		return openFile(it)
	case proto.KindSymlink:
		target, err := os.Readlink(it.path)
		if err != nil {
			return nil, fmt.Errorf("cannot read the link: %v", unwrapPathError(err))
		}
		if len(target) == 0 || len(target) > proto.MaxSymlinkLen {
			return nil, fmt.Errorf("a link target of %d bytes cannot be stored (1 to %d)", len(target), proto.MaxSymlinkLen)
		}
		o.r = strings.NewReader(target)
		fi = sizedInfo{fi, int64(len(target))}
	}
	o.describe(it.path, fi)
	return o, nil
}

// errNotAFile is what openFile says of an entry that is no longer a
// regular file.
var errNotAFile = errors.New("no longer a regular file")

// openFile opens a regular file and reads its metadata.
func openFile(it sendItem) (*opened, error) {
	flags := os.O_RDONLY
	if !it.follow {
		flags |= syscall.O_NOFOLLOW // a link now: errNotAFile, and it is looked at again
	}
	f, err := os.OpenFile(it.path, flags, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, errVanished
	case errors.Is(err, syscall.ELOOP):
		return nil, errNotAFile
	case err != nil:
		return nil, fmt.Errorf("cannot open: %v", unwrapPathError(err))
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, errNotAFile
	}
	o := &opened{kind: proto.KindFile, f: f, r: f, fi: fi}
	o.describe(it.path, fi)
	return o, nil
}

// describe fills in what o records of the entry at path, fi.
func (o *opened) describe(path string, fi fs.FileInfo) {
	o.mtime, o.mode = fi.ModTime(), posixMode(fi.Mode())
	if o.kind.HasContent() {
		o.size = fi.Size()
	}
	m, warnings := readMeta(path, o.f, fi)
	o.meta, o.warnings = proto.AppendMeta(nil, &m), warnings
}

// sizedInfo is a FileInfo with another size: a symbolic link's is its
// target's length, which Lstat does not promise.
type sizedInfo struct {
	fs.FileInfo
	size int64
}

func (i sizedInfo) Size() int64 { return i.size }

// changedSince reports whether the entry at path is no longer what o was
// opened as: another size or modification time, or another file.
func (o *opened) changedSince(path string, follow bool) bool {
	if o.f == nil {
		return false // links and empty kinds are read in one call
	}
	stat := os.Lstat
	if follow {
		stat = os.Stat
	}
	now, err := stat(path)
	return err != nil || !os.SameFile(now, o.fi) || now.Size() != o.size || !now.ModTime().Equal(o.mtime)
}

// sendAttempt sends an entry once: ask, send the missing ranges, compare
// the server's checksum with ours, then commit or abort. A file that
// changes while it is read is stored as read (the checksums are of the
// bytes sent) and marked changed; with pad, one that shrinks is padded
// with zeros to its announced size.
func (s *Session) sendAttempt(ctx context.Context, it sendItem, opts SendOptions, attempt int, pad bool, fp FileProgress, bytes *atomic.Int64) (FileStatus, error) {
	o, err := openEntry(it)
	if err != nil {
		return FileStatus{}, err
	}
	defer o.close()
	size := o.size
	req := &proto.UploadRequest{
		Name:    it.name,
		Size:    uint64(size),
		ModTime: o.mtime.UnixNano(),
		Mode:    o.mode,
		Kind:    o.kind,
		Meta:    o.meta,
	}
	st := FileStatus{Warnings: o.warnings}
	type sums struct {
		crc uint32
		sha [32]byte
	}
	var pre *sums // the content's checksums, read before sending (-c, or a resume)
	if opts.Checksum {
		crc, sha, err := proto.FileChecksums(o.r, size)
		if err != nil {
			return st, fmt.Errorf("reading: %v", unwrapPathError(err))
		}
		pre = &sums{crc, sha}
		req.Flags |= proto.FlagHashed
		req.CRC, req.SHA256 = crc, sha
	}

	c := s.newCall()
	req.Req = c.req
	var xfer uint32
	settled := false // the server has committed or discarded the transfer
	defer func() {
		// endCall also knows a transfer whose UploadReady we never read.
		// An interrupted send (ctx done) leaves the upload to the server,
		// which keeps it for resume when the session ends; any other
		// failure here abandons it.
		if x := s.endCall(c); x != 0 && !settled && s.Err() == nil && ctx.Err() == nil {
			s.send(&proto.UploadAbort{Xfer: x}) // best effort; its answer is dropped
		}
	}()
	if err := s.send(req); err != nil {
		return st, err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		return st, err
	}
	ready, ok := m.(*proto.UploadReady)
	if !ok {
		return st, proto.Errorf(proto.CodeProtocol, "server answered an upload with %v", m.Type())
	}
	if ready.Status == proto.ReadyUnchanged {
		fp.Add(size)
		st.Unchanged, st.Version = true, ready.Version
		return st, nil
	}
	xfer = ready.Xfer

	// Read the missing ranges front to back, checksumming what is read,
	// and queue the chunks. When the server wants the whole file (the
	// usual case) that running checksum is of exactly the bytes it will
	// store, whatever happens to the file meanwhile. When it has part of
	// the file from an interrupted send, the reference must cover the
	// whole file, so it is read first.
	whole := size == 0 || (len(ready.Missing) == 1 && ready.Missing[0] == proto.Range{Off: 0, Len: uint64(size)})
	if !whole && pre == nil {
		crc, sha, err := proto.FileChecksums(o.r, size)
		if err != nil {
			return st, fmt.Errorf("reading: %v", unwrapPathError(err))
		}
		pre = &sums{crc, sha}
	}
	var missing uint64
	for _, r := range ready.Missing {
		missing += r.Len
	}
	if missing < uint64(size) {
		st.Resumed = size - int64(missing) // kept by the server from an interrupted send
		fp.Add(st.Resumed)
	}
	ck := proto.NewCksum()
	h := sha256.New()
	routes := s.routes(ctx, xfer, ready.UploadID, missing)
	if opts.testHookRoutes != nil {
		opts.testHookRoutes(it.name, routes.list)
	}
	shrank := false
	progress := func(n int, err error) {
		if err == nil {
			fp.Add(int64(n))
			bytes.Add(int64(n))
		}
	}
	for _, r := range ready.Missing {
		if r.Off+r.Len > uint64(size) {
			return st, proto.Errorf(proto.CodeProtocol, "server asked for bytes beyond the end of the file")
		}
		for off, end := r.Off, r.Off+r.Len; off < end; {
			rt, err := routes.pick(ctx)
			if err != nil {
				return st, s.orSessionErr(err)
			}
			buf, err := rt.sender.Buffer(ctx)
			if err != nil {
				return st, s.routeErr(rt, err)
			}
			n := min(uint64(len(buf)), end-off)
			rn, err := o.r.ReadAt(buf[:n], int64(off))
			if err != nil && !(errors.Is(err, io.EOF) && uint64(rn) == n) {
				if !errors.Is(err, io.EOF) {
					rt.sender.Release(buf)
					return st, fmt.Errorf("reading: %v", unwrapPathError(err))
				}
				shrank = true // the file shrank under us
				if !pad || !whole {
					rt.sender.Release(buf)
					break
				}
				clear(buf[rn:n])
			}
			ck.Write(buf[:n])
			h.Write(buf[:n])
			if opts.testHookCorrupt != nil {
				opts.testHookCorrupt(it.name, attempt, buf[:n])
			}
			rt.s.load.add(int64(n), time.Now())
			sent := func(k int, err error) {
				rt.s.load.done(int64(n), err == nil, time.Now())
				s.chunkWritten()
				if err != nil && rt.s != s {
					s.peerFailed(err)
				}
				progress(k, err)
			}
			if err := rt.sender.Send(ctx, rt.xfer, &ready.UploadID, off, buf[:n], sent); err != nil {
				rt.s.load.done(int64(n), false, time.Now())
				s.chunkWritten()
				return st, s.routeErr(rt, err)
			}
			off += n
			if opts.testHookChunkRead != nil {
				opts.testHookChunkRead(it.name, attempt, int64(off))
			}
		}
		if shrank && !(pad && whole) {
			break
		}
	}
	if shrank && !(pad && whole) {
		if err := s.abort(ctx, c, xfer); err != nil {
			return st, err
		}
		settled = true
		return st, fmt.Errorf("%w: it shrank", errReread)
	}
	st.Changed = shrank || o.changedSince(it.path, it.follow)
	read := sums{crc: ck.Sum32()}
	h.Sum(read.sha[:0])
	ref := read // what the server's checksums must equal
	if !whole {
		ref = *pre
	} else if pre != nil && *pre != read {
		st.Changed = true // hashed (-c) before, read otherwise now
	}

	m, err = s.wait(ctx, c)
	if err != nil {
		return st, err
	}
	sum, ok := m.(*proto.UploadChecksum)
	if !ok {
		return st, proto.Errorf(proto.CodeProtocol, "server answered %v instead of UploadChecksum", m.Type())
	}
	if sum.CRC != ref.crc || sum.SHA256 != ref.sha {
		if err := s.abort(ctx, c, xfer); err != nil {
			return st, err
		}
		settled = true
		if !whole && st.Changed {
			// The server's bytes from before the change and ours from
			// after it would make a file that never was: read it all
			// again, under a new upload.
			return st, fmt.Errorf("%w under a resumed upload", errReread)
		}
		return st, fmt.Errorf("%w: server cksum %d, client cksum %d", errMismatch, sum.CRC, ref.crc)
	}
	if err := s.send(&proto.UploadCommit{Xfer: xfer}); err != nil {
		return st, err
	}
	m, err = s.wait(ctx, c)
	if err != nil {
		return st, err
	}
	settled = true
	res, ok := m.(*proto.UploadResult)
	if !ok || res.Status == proto.ResultDiscarded {
		return st, proto.Errorf(proto.CodeProtocol, "server answered a commit with %v", m.Type())
	}
	st.Version, st.Identical = res.Version, res.Status == proto.ResultIdentical
	return st, nil
}

// abort tells the server to discard a transfer and waits until it has.
func (s *Session) abort(ctx context.Context, c *call, xfer uint32) error {
	if err := s.send(&proto.UploadAbort{Xfer: xfer}); err != nil {
		return err
	}
	for {
		m, err := s.wait(ctx, c)
		if err != nil {
			return err
		}
		if r, ok := m.(*proto.UploadResult); ok && r.Status == proto.ResultDiscarded {
			return nil
		}
		// An UploadChecksum that crossed our abort: ignore it.
	}
}

// routeErr is orSessionErr for a chunk that failed on route rt: a peer's
// failure ends s too (see peerFailed).
func (s *Session) routeErr(rt *route, err error) error {
	if rt.s != s && s.Err() == nil {
		if perr := rt.s.Err(); perr != nil {
			err = perr
		}
		s.peerFailed(err)
	}
	return s.orSessionErr(err)
}

// orSessionErr prefers the session's own error (the server closed the
// connection, say) to the cancellation it caused.
func (s *Session) orSessionErr(err error) error {
	if serr := s.Err(); serr != nil {
		return serr
	}
	return err
}

// describe is the result shown for an entry.
func describe(st FileStatus) string {
	var d string
	switch {
	case st.Unchanged:
		return "unchanged"
	case st.Identical:
		d = "identical"
	case st.Resumed > 0:
		d = fmt.Sprintf("resumed v%d", st.Version)
	default:
		d = fmt.Sprintf("stored v%d", st.Version)
	}
	if st.Changed {
		d += " (changed while read)"
	}
	return d
}

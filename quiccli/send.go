package quiccli

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/quic-go/quic-go"
)

// maxResends is how many times a file is sent again after a checksum
// mismatch before it is reported as failed: four attempts in all.
const maxResends = 3

// SendOptions says what to send and how.
type SendOptions struct {
	Paths    []string // files and directories, recursively
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
	// testHookRoutes, if set, sees the routes of each file's chunks.
	testHookRoutes func(name string, rs []*route)
}

// SendResult counts what a send did.
type SendResult struct {
	Sent      int   // files stored (a new version, or identical content confirmed)
	Unchanged int   // files the server already held; nothing sent
	Failed    int   // files not stored
	Skipped   int   // symlinks and special files passed over
	Bytes     int64 // file bytes sent, resends included
	Elapsed   time.Duration
	FirstErr  error // the first failure, for the exit message
}

// OK reports whether every file is stored or unchanged.
func (r *SendResult) OK() bool { return r.Failed == 0 }

// sendItem is one local file and the name it is stored under.
type sendItem struct {
	path string
	name string
	size int64
}

// collect walks the paths and returns the regular files under them, with
// their stored names: the path relative to the argument's parent, with '/'
// separators ("send /home/me/docs" stores "docs/a.txt").
func collect(paths []string, warn func(format string, args ...any)) ([]sendItem, int, []error) {
	var items []sendItem
	var errs []error
	skipped := 0
	seen := map[string]string{}
	add := func(path, name string, size int64) {
		if prev, ok := seen[name]; ok {
			errs = append(errs, fmt.Errorf("%s and %s would both be stored as %q; send them separately", prev, path, name))
			return
		}
		if len(name) > proto.MaxNameLen {
			errs = append(errs, fmt.Errorf("cannot send %s: its stored name would be %d bytes, over the %d-byte limit", path, len(name), proto.MaxNameLen))
			return
		}
		seen[name] = path
		items = append(items, sendItem{path: path, name: name, size: size})
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
		if fi.Mode().IsRegular() {
			add(arg, base, fi.Size())
			continue
		}
		if !fi.IsDir() {
			warn("skipping %s: not a regular file or directory", arg)
			skipped++
			continue
		}
		err = filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				errs = append(errs, fmt.Errorf("cannot read %s: %v", p, unwrapPathError(err)))
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				return nil
			}
			if !d.Type().IsRegular() {
				warn("skipping %s: %s", p, describeType(d.Type()))
				skipped++
				return nil
			}
			info, err := d.Info()
			if err != nil {
				errs = append(errs, fmt.Errorf("cannot read %s: %v", p, unwrapPathError(err)))
				return nil
			}
			rel, err := filepath.Rel(arg, p)
			if err != nil {
				return err
			}
			add(p, base+"/"+filepath.ToSlash(rel), info.Size())
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].name < items[j].name })
	return items, skipped, errs
}

func describeType(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link (not followed)"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "not a regular file"
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

// collectReported walks the paths, reports what it passes over or cannot
// read, and announces the total.
func collectReported(paths []string, rep Reporter, res *SendResult) []sendItem {
	items, skipped, errs := collect(paths, rep.Warn)
	res.Skipped = skipped
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
			switch {
			case err != nil && keepLost && s.Err() != nil && ctx.Err() == nil:
				lost = append(lost, it)
				fp.Done("interrupted", nil)
			case err != nil:
				res.fail(fmt.Errorf("%s: %w", it.name, err))
				fp.Done("", err)
			case st.Unchanged:
				res.Unchanged++
				fp.Done(describe(st), nil)
			default:
				res.Sent++
				fp.Done(describe(st), nil)
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
		if keepLost && s.Err() != nil && ctx.Err() == nil {
			lost = append(lost, rest...)
		} else {
			res.Failed += len(rest)
			if res.FirstErr == nil {
				res.FirstErr = context.Cause(ctx)
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
	s, _, err := c.Connect(ctx, server, name)
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
	items := collectReported(opts.Paths, rep, res)
	reconnects := 0
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
		rep.Warn("connection lost (%v); reconnecting in %v to resume %s (attempt %d of %d)",
			lastErr, wait, what, *n, ro.Attempts)
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

// FileStatus is how a file ended.
type FileStatus struct {
	Unchanged bool   // the server held this content already
	Identical bool   // sent, and found identical to the latest version
	Version   uint32 // the version holding the content
	Attempts  int    // how many times it was sent
	Resumed   int64  // bytes the server already had from an interrupted send
}

// errMismatch means one attempt's checksums did not match, or the file
// changed while it was read: the attempt was discarded and may be retried.
var errMismatch = errors.New("checksum mismatch")

func (s *Session) sendFile(ctx context.Context, it sendItem, opts SendOptions, fp FileProgress, bytes *atomic.Int64) (FileStatus, error) {
	var lastErr error
	for attempt := 1; attempt <= maxResends+1; attempt++ {
		if attempt > 1 {
			fp.Retry()
		}
		st, err := s.sendAttempt(ctx, it, opts, attempt, fp, bytes)
		st.Attempts = attempt
		if err == nil {
			return st, nil
		}
		if !errors.Is(err, errMismatch) {
			return st, err
		}
		lastErr = err
	}
	return FileStatus{Attempts: maxResends + 1}, fmt.Errorf("%w on all %d attempts (%v); the file was not stored", errMismatch, maxResends+1, errors.Unwrap(lastErr))
}

// sendAttempt sends a file once: ask, send the missing ranges, compare the
// server's checksum with ours, then commit or abort.
func (s *Session) sendAttempt(ctx context.Context, it sendItem, opts SendOptions, attempt int, fp FileProgress, bytes *atomic.Int64) (FileStatus, error) {
	f, err := os.Open(it.path)
	if err != nil {
		return FileStatus{}, fmt.Errorf("cannot open: %v", unwrapPathError(err))
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return FileStatus{}, err
	}
	if !before.Mode().IsRegular() {
		return FileStatus{}, fmt.Errorf("no longer a regular file")
	}
	size := before.Size()
	req := &proto.UploadRequest{
		Name:    it.name,
		Size:    uint64(size),
		ModTime: before.ModTime().UnixNano(),
		Mode:    uint32(before.Mode().Perm()),
	}
	type sums struct {
		crc uint32
		sha [32]byte
	}
	var ref *sums // what the server's checksum must equal
	if opts.Checksum {
		crc, sha, err := proto.FileChecksums(f, size)
		if err != nil {
			return FileStatus{}, fmt.Errorf("reading: %v", unwrapPathError(err))
		}
		ref = &sums{crc, sha}
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
		return FileStatus{}, err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		return FileStatus{}, err
	}
	ready, ok := m.(*proto.UploadReady)
	if !ok {
		return FileStatus{}, proto.Errorf(proto.CodeProtocol, "server answered an upload with %v", m.Type())
	}
	if ready.Status == proto.ReadyUnchanged {
		fp.Add(size)
		return FileStatus{Unchanged: true, Version: ready.Version}, nil
	}
	xfer = ready.Xfer

	// Read the missing ranges front to back, checksumming what is read, and
	// queue the chunks. When the server wants the whole file (the usual
	// case) that running checksum is the reference; otherwise hash first.
	whole := size == 0 || (len(ready.Missing) == 1 && ready.Missing[0] == proto.Range{Off: 0, Len: uint64(size)})
	if !whole && ref == nil {
		crc, sha, err := proto.FileChecksums(f, size)
		if err != nil {
			return FileStatus{}, fmt.Errorf("reading: %v", unwrapPathError(err))
		}
		ref = &sums{crc, sha}
	}
	var missing uint64
	for _, r := range ready.Missing {
		missing += r.Len
	}
	resumed := int64(0)
	if missing < uint64(size) {
		resumed = size - int64(missing) // kept by the server from an interrupted send
		fp.Add(resumed)
	}
	ck := proto.NewCksum()
	h := sha256.New()
	routes := s.routes(ctx, xfer, ready.UploadID, missing)
	if opts.testHookRoutes != nil {
		opts.testHookRoutes(it.name, routes.list)
	}
	changed := false
	progress := func(n int, err error) {
		if err == nil {
			fp.Add(int64(n))
			bytes.Add(int64(n))
		}
	}
	for _, r := range ready.Missing {
		if r.Off+r.Len > uint64(size) {
			return FileStatus{}, proto.Errorf(proto.CodeProtocol, "server asked for bytes beyond the end of the file")
		}
		for off, end := r.Off, r.Off+r.Len; off < end; {
			rt, err := routes.pick(ctx)
			if err != nil {
				return FileStatus{}, s.orSessionErr(err)
			}
			buf, err := rt.sender.Buffer(ctx)
			if err != nil {
				return FileStatus{}, s.routeErr(rt, err)
			}
			n := min(uint64(len(buf)), end-off)
			rn, err := f.ReadAt(buf[:n], int64(off))
			if err != nil && !(errors.Is(err, io.EOF) && uint64(rn) == n) {
				rt.sender.Release(buf)
				if errors.Is(err, io.EOF) {
					changed = true // the file shrank under us
					break
				}
				return FileStatus{}, fmt.Errorf("reading: %v", unwrapPathError(err))
			}
			ck.Write(buf[:n])
			h.Write(buf[:n])
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
				return FileStatus{}, s.routeErr(rt, err)
			}
			off += n
			if opts.testHookChunkRead != nil {
				opts.testHookChunkRead(it.name, attempt, int64(off))
			}
		}
		if changed {
			break
		}
	}
	if changed {
		if err := s.abort(ctx, c, xfer); err != nil {
			return FileStatus{}, err
		}
		settled = true
		return FileStatus{}, fmt.Errorf("%w: the file shrank while it was read", errMismatch)
	}
	if after, err := os.Stat(it.path); err != nil || after.Size() != size || !after.ModTime().Equal(before.ModTime()) {
		changed = true
	}
	if ref == nil {
		ref = &sums{crc: ck.Sum32()}
		h.Sum(ref.sha[:0])
	}

	m, err = s.wait(ctx, c)
	if err != nil {
		return FileStatus{}, err
	}
	sum, ok := m.(*proto.UploadChecksum)
	if !ok {
		return FileStatus{}, proto.Errorf(proto.CodeProtocol, "server answered %v instead of UploadChecksum", m.Type())
	}
	if sum.CRC != ref.crc || sum.SHA256 != ref.sha || changed {
		if err := s.abort(ctx, c, xfer); err != nil {
			return FileStatus{}, err
		}
		settled = true
		if changed {
			return FileStatus{}, fmt.Errorf("%w: the file changed while it was read", errMismatch)
		}
		return FileStatus{}, fmt.Errorf("%w: server cksum %d, client cksum %d", errMismatch, sum.CRC, ref.crc)
	}
	if err := s.send(&proto.UploadCommit{Xfer: xfer}); err != nil {
		return FileStatus{}, err
	}
	m, err = s.wait(ctx, c)
	if err != nil {
		return FileStatus{}, err
	}
	settled = true
	res, ok := m.(*proto.UploadResult)
	if !ok || res.Status == proto.ResultDiscarded {
		return FileStatus{}, proto.Errorf(proto.CodeProtocol, "server answered a commit with %v", m.Type())
	}
	return FileStatus{Version: res.Version, Identical: res.Status == proto.ResultIdentical, Resumed: resumed}, nil
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

// describe is the one-word result shown for a file.
func describe(st FileStatus) string {
	switch {
	case st.Unchanged:
		return "unchanged"
	case st.Identical:
		return "identical"
	case st.Resumed > 0:
		return fmt.Sprintf("resumed v%d", st.Version)
	}
	return fmt.Sprintf("stored v%d", st.Version)
}

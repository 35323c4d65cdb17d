package quiccli

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qbackup/qbackup/proto"
)

// RestoreOptions says what to restore and where.
type RestoreOptions struct {
	Name      string // a stored entry, or a directory: everything below it
	Version   int    // 0: latest; only for a single entry
	Output    string // destination; "" for the name's last element in the current directory
	Overwrite bool   // replace entries that exist and differ from what is stored
}

// RestoreResult counts what a restore did, by entry.
type RestoreResult struct {
	Restored  int // entries written: files, links, directories, special files
	Files     int // of those, files and symbolic links whose content was fetched
	Identical int // entries already there as stored: nothing fetched
	Failed    int
	// Skipped counts entries not restored on purpose: an entry in the way
	// that differs (without Overwrite), or a special file only root can
	// make. Incomplete counts those restored without part of their
	// metadata (an extended attribute the file system refused).
	Skipped, Incomplete int
	FirstSkip           error // why the first entry was skipped
	// NotStarted counts entries never begun: the restore was interrupted,
	// or stopped for want of space.
	NotStarted int
	Bytes      int64 // the size of the files restored
	Received   int64 // bytes received in all, resent ones included
	FirstErr   error // the first failure, for the exit message
	// NoSpace, when set, is why the restore stopped before the end: the
	// destination's disk is full.
	NoSpace error
}

func (r *RestoreResult) fail(err error) {
	r.Failed++
	if r.FirstErr == nil {
		r.FirstErr = err
	}
}

// restoreTarget is one entry to restore.
type restoreTarget struct {
	name    string
	version int // the version listed: what is fetched, whatever is stored since
	size    int64
	kind    proto.Kind
	mode    uint32
	mtime   time.Time
	crc     uint32
	sha     [32]byte
	meta    *proto.Meta
	rel     string // where it goes, relative to the restore's root
	dest    string // the same, for messages

	// leader is the target this one is a hard link of (the first of its
	// link group), or nil; done says a target is in place, so that its
	// followers can link to it.
	leader *restoreTarget
	done   bool
	made   bool // a directory this restore made (not one that was there)

	part *partialRestore // what an interrupted attempt left, or nil
}

// restoreRun is one restore: where it writes and what it has done.
type restoreRun struct {
	root      *os.Root // the directory the destination is in
	dirs      heldDirs // directories under root, held open
	overwrite bool
	rep       Reporter
	res       *RestoreResult
	space     spaceGate

	mu sync.Mutex // guards res, and the reporter's lines
}

// planRestore lists what name covers and where each entry goes, under
// root, the directory the destination is in (rootDir, absolute).
func (s *Session) planRestore(ctx context.Context, o RestoreOptions) (targets []*restoreTarget, rootDir string, err error) {
	name := o.Name
	entries, err := s.List(ctx, name, o.Version != 0)
	if err != nil {
		return nil, "", err
	}
	if len(entries) == 0 && strings.Contains(name, `\`) {
		// Perhaps a name as ls shows it (proto.Quote), typed back in.
		if n, uerr := proto.Unquote(name); uerr == nil && n != name {
			if more, err := s.List(ctx, n, o.Version != 0); err == nil && len(more) > 0 {
				name, entries = n, more
			}
		}
	}
	if o.Version != 0 {
		entries, err = pickVersion(entries, name, o.Version)
		if err != nil {
			return nil, "", err
		}
	}
	out := o.Output
	if out == "" {
		out = path.Base(name)
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return nil, "", err
	}
	rootDir, top := filepath.Dir(abs), filepath.Base(abs)
	links := map[[4]uint64]*restoreTarget{}
	for _, e := range entries {
		var rel string
		switch {
		case e.Name == name:
			rel = top
		case strings.HasPrefix(e.Name, name+"/"):
			rel = filepath.Join(top, filepath.FromSlash(strings.TrimPrefix(e.Name, name+"/")))
		default:
			continue // the server listed something it was not asked for
		}
		if proto.ValidateName(e.Name) != nil || !filepath.IsLocal(rel) {
			return nil, "", fmt.Errorf("the server listed %q, which would land outside %s; refusing", proto.Quote(e.Name), out)
		}
		meta, err := proto.ParseMeta(e.Meta)
		if err != nil {
			return nil, "", fmt.Errorf("the server listed %q with unreadable metadata (%v); refusing", proto.Quote(e.Name), err)
		}
		t := &restoreTarget{name: e.Name, version: int(e.Version), size: int64(e.Size), kind: e.Kind, mode: e.Mode,
			mtime: time.Unix(0, e.ModTime), crc: e.CRC, sha: e.SHA256, meta: meta, rel: rel, dest: filepath.Join(rootDir, rel)}
		if e.Kind == proto.KindFile && (meta.Dev != 0 || meta.Inode != 0) {
			// Hard links of one file share device, inode, and so content.
			key := [4]uint64{meta.Dev, meta.Inode, uint64(e.Size), uint64(e.ModTime)}
			if l, ok := links[key]; ok && l.sha == e.SHA256 {
				t.leader = l
			} else {
				links[key] = t
			}
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil, "", fmt.Errorf("nothing named %q is stored; see qbackup ls", proto.Quote(o.Name))
	}
	// By name, so that a directory comes before what it holds (a prefix
	// sorts first), whatever order the server listed them in.
	sort.Slice(targets, func(i, j int) bool { return targets[i].name < targets[j].name })
	if o.Version != 0 && (len(targets) != 1 || targets[0].name != name) {
		return nil, "", fmt.Errorf("--version needs the name of one entry, and %q is a directory", proto.Quote(name))
	}
	return targets, rootDir, nil
}

// Restore fetches a stored entry, or everything under a directory name,
// and writes each one atomically after checking its checksums.
func (s *Session) Restore(ctx context.Context, o RestoreOptions, rep Reporter) (*RestoreResult, error) {
	targets, rootDir, err := s.planRestore(ctx, o)
	if err != nil {
		return nil, err
	}
	run, err := startRestore(targets, rootDir, o, rep)
	if err != nil {
		return nil, err
	}
	defer run.close()
	s.restoreTargets(ctx, run, contentTargets(targets), false)
	run.finish(ctx, targets, s)
	return run.res, nil
}

// RestoreResilient restores like Session.Restore, but when the connection
// is lost it reconnects with backoff and resumes: entries not begun yet
// are asked for again, and each file under way for the ranges it lacks
// (the chunks being written when the connection ended come again).
func (c *Client) RestoreResilient(ctx context.Context, o RestoreOptions, ro ReconnectOptions, rep Reporter) (*RestoreResult, error) {
	reconnects := 0
	s, err := c.connectRetrying(ctx, "", "", ro, &reconnects, rep)
	if err != nil {
		return nil, err
	}
	defer func() { s.Close() }()
	targets, rootDir, err := s.planRestore(ctx, o)
	if err != nil {
		return nil, err
	}
	run, err := startRestore(targets, rootDir, o, rep)
	if err != nil {
		return nil, err
	}
	defer run.close()
	for ts := contentTargets(targets); len(ts) > 0; {
		lost := s.restoreTargets(ctx, run, ts, reconnects < ro.Attempts)
		if len(lost) == 0 {
			break
		}
		lastErr := s.Err()
		s.Close()
		ns, err := c.redial(ctx, ro, &reconnects, lastErr, rep, plural(len(lost), "file"))
		if err != nil {
			for _, t := range lost {
				t.dropPart()
				run.failed(t, nil, err)
			}
			break // s, closed, tells finish not to fetch
		}
		s, ts = ns, lost
	}
	run.finish(ctx, targets, s)
	return run.res, nil
}

// contentTargets are the targets fetched over the network: files and
// symbolic links, but for hard links of a file restored with them.
func contentTargets(targets []*restoreTarget) []*restoreTarget {
	var out []*restoreTarget
	for _, t := range targets {
		if t.kind.HasContent() && t.leader == nil {
			out = append(out, t)
		}
	}
	return out
}

// startRestore opens the destination's directory, announces the restore
// and makes its directories: first, so that files land in them, and
// writable, so that they can (finish gives them their recorded modes).
func startRestore(targets []*restoreTarget, rootDir string, o RestoreOptions, rep Reporter) (*restoreRun, error) {
	if err := os.MkdirAll(rootDir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot make %s: %v", rootDir, unwrapPathError(err))
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %v", rootDir, unwrapPathError(err))
	}
	run := newRestoreRun(root, o.Overwrite, rep)
	var total int64
	for _, t := range targets {
		if t.kind.HasContent() && t.leader == nil {
			total += t.size
		}
	}
	rep.Start(len(targets), total)
	for _, t := range targets {
		if t.kind == proto.KindDir {
			run.makeDir(t)
		}
	}
	return run, nil
}

func newRestoreRun(root *os.Root, overwrite bool, rep Reporter) *restoreRun {
	run := &restoreRun{root: root, overwrite: overwrite, rep: rep, res: &RestoreResult{}}
	run.dirs.root = root
	run.space.cond = sync.NewCond(&run.space.mu)
	return run
}

// close releases what the run holds open.
func (run *restoreRun) close() {
	run.dirs.closeAll()
	run.root.Close()
}

// heldDirs opens the directories a restore writes in once each, through
// its root, and holds them open, so that each file costs calls on one
// name in a held directory (lstatAt, openAt, renameAt...) rather than
// the root's walk from its top for every call: per file, a tree of
// 10,000 files took 150,000 openat and close calls that way instead of
// 30,000. At most maxHeldDirs are held; beyond, a directory is opened for
// each use.
type heldDirs struct {
	root *os.Root
	mu   sync.Mutex
	open map[string]*os.File
}

const maxHeldDirs = 256

// get returns the directory rel, made if missing, and the function that
// releases it when done.
func (h *heldDirs) get(rel string) (*os.File, func(), error) {
	h.mu.Lock()
	d := h.open[rel]
	h.mu.Unlock()
	if d != nil {
		return d, func() {}, nil
	}
	d, err := h.root.Open(rel)
	if errors.Is(err, fs.ErrNotExist) {
		if err = h.root.MkdirAll(rel, 0o755); err == nil {
			d, err = h.root.Open(rel)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if held := h.open[rel]; held != nil {
		d.Close()
		return held, func() {}, nil
	}
	if len(h.open) >= maxHeldDirs {
		return d, func() { d.Close() }, nil
	}
	if h.open == nil {
		h.open = make(map[string]*os.File)
	}
	h.open[rel] = d
	return d, func() {}, nil
}

func (h *heldDirs) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.open {
		d.Close()
	}
	clear(h.open)
}

// dirOf returns t's directory, held, for calls on its base name.
func (run *restoreRun) dirOf(t *restoreTarget) (*os.File, func(), error) {
	d, release, err := run.dirs.get(filepath.Dir(t.rel))
	if err != nil {
		return nil, nil, fmt.Errorf("cannot open %s: %v", filepath.Dir(t.dest), unwrapPathError(err))
	}
	return d, release, nil
}

// makeDir makes sure a directory is at t's place.
func (run *restoreRun) makeDir(t *restoreTarget) {
	fi, err := run.root.Lstat(t.rel)
	switch {
	case err == nil && fi.IsDir():
		return // there already; finish sets its metadata
	case err == nil && !run.overwrite:
		run.skipped(t, "a %s is in the way; use --overwrite to replace it", describeMode(fi.Mode()))
		return
	case err == nil:
		if err := run.root.Remove(t.rel); err != nil {
			run.failed(t, nil, fmt.Errorf("cannot replace the %s in the way: %v", describeMode(fi.Mode()), unwrapPathError(err)))
			return
		}
	case !errors.Is(err, fs.ErrNotExist):
		run.failed(t, nil, fmt.Errorf("cannot look at %s: %v", t.dest, unwrapPathError(err)))
		return
	}
	if err := run.root.MkdirAll(filepath.Dir(t.rel), 0o755); err != nil {
		run.failed(t, nil, fmt.Errorf("cannot make %s: %v", filepath.Dir(t.dest), unwrapPathError(err)))
		return
	}
	if err := run.root.Mkdir(t.rel, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		run.failed(t, nil, fmt.Errorf("cannot make %s: %v", t.dest, unwrapPathError(err)))
		return
	}
	t.made = true
}

// finish makes what needs no transfer, once the files are in place: hard
// links to files restored, special files, symbolic links' metadata, then
// the directories' metadata, deepest first (a directory's time changes as
// entries are made in it, and a read-only one takes no more). Hard links
// whose file could not be restored are fetched on their own, over s.
func (run *restoreRun) finish(ctx context.Context, targets []*restoreTarget, s *Session) {
	stopped := ctx.Err() != nil || run.res.NoSpace != nil
	var orphans []*restoreTarget
	for _, t := range targets {
		switch {
		case t.kind == proto.KindDir:
		case stopped && (t.leader != nil || !t.kind.HasContent()):
			run.notStarted(1)
		case t.leader != nil && t.leader.done:
			run.link(t)
		case t.leader != nil:
			orphans = append(orphans, t)
		case !t.kind.HasContent():
			run.node(t)
		}
	}
	if len(orphans) > 0 && s.Err() == nil && !stopped {
		for _, t := range orphans {
			t.leader = nil
		}
		s.restoreTargets(ctx, run, orphans, false)
	} else {
		run.notStarted(len(orphans))
	}
	for i := len(targets) - 1; i >= 0; i-- {
		if t := targets[i]; t.kind == proto.KindDir && !stopped {
			run.dirMeta(t)
		}
	}
	if stopped {
		for _, t := range targets {
			if t.kind == proto.KindDir {
				run.notStarted(1) // its metadata is not set
			}
		}
	}
}

func (run *restoreRun) notStarted(n int) {
	run.mu.Lock()
	defer run.mu.Unlock()
	run.res.NotStarted += n
}

// link makes t a hard link of its leader's file.
func (run *restoreRun) link(t *restoreTarget) {
	fp := run.rep.File(t.name, 0)
	lead, err := run.root.Lstat(t.leader.rel)
	if err != nil {
		run.failed(t, fp, fmt.Errorf("cannot link to %s: %v", t.leader.dest, unwrapPathError(err)))
		return
	}
	if fi, err := run.root.Lstat(t.rel); err == nil {
		switch {
		case os.SameFile(fi, lead):
			run.identical(t, fp)
			return
		case fi.IsDir():
			run.failed(t, fp, fmt.Errorf("a directory is in the way"))
			return
		case !run.overwrite:
			run.skippedFile(t, fp, "it exists and is not a link of %s; use --overwrite to replace it", t.leader.dest)
			return
		}
	}
	tmp := tempName(t.rel)
	if err := run.root.Link(t.leader.rel, tmp); err != nil {
		run.failed(t, fp, fmt.Errorf("cannot link to %s: %v", t.leader.dest, unwrapPathError(err)))
		return
	}
	if err := run.root.Rename(tmp, t.rel); err != nil {
		run.root.Remove(tmp)
		run.failed(t, fp, fmt.Errorf("cannot move into place: %v", unwrapPathError(err)))
		return
	}
	run.restored(t, fp, 0, nil)
}

// node makes a FIFO, socket or device at t's place, if it is not there
// as stored already.
func (run *restoreRun) node(t *restoreTarget) {
	fp := run.rep.File(t.name, 0)
	if fi, err := run.root.Lstat(t.rel); err == nil {
		k, _ := kindOf(fi.Mode())
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch {
		case k == t.kind && (st == nil || uint64(st.Rdev) == t.meta.Rdev || !(k == proto.KindCharDev || k == proto.KindBlock)):
			run.finishAttrs(t, fp, nil, filepath.Base(t.rel), true)
			return
		case fi.IsDir():
			run.failed(t, fp, fmt.Errorf("a directory is in the way"))
			return
		case !run.overwrite:
			run.skippedFile(t, fp, "a %s is in the way; use --overwrite to replace it", describeMode(fi.Mode()))
			return
		}
	}
	dir, err := run.root.Open(filepath.Dir(t.rel))
	if err != nil {
		run.failed(t, fp, fmt.Errorf("cannot open %s: %v", filepath.Dir(t.dest), unwrapPathError(err)))
		return
	}
	defer dir.Close()
	tmp := filepath.Base(tempName(t.rel))
	if err := makeNode(dir, tmp, t.kind, t.mode, t.meta.Rdev); err != nil {
		if errors.Is(err, syscall.EPERM) {
			run.skippedFile(t, fp, "only root can make a %v: skipped", t.kind)
			return
		}
		run.failed(t, fp, fmt.Errorf("cannot make a %v: %v", t.kind, err))
		return
	}
	run.finishAttrs(t, fp, dir, tmp, false)
}

// finishAttrs sets t's metadata on the entry base in dir (nil: t's own
// directory) and, unless it is t's place already (identical), moves it
// there.
func (run *restoreRun) finishAttrs(t *restoreTarget, fp FileProgress, dir *os.File, base string, identical bool) {
	if dir == nil {
		d, err := run.root.Open(filepath.Dir(t.rel))
		if err != nil {
			run.failed(t, fp, fmt.Errorf("cannot open %s: %v", filepath.Dir(t.dest), unwrapPathError(err)))
			return
		}
		defer d.Close()
		dir = d
	}
	warnings, err := applyMeta(dir, base, nil, t)
	if err == nil {
		err = setTimes(dir, base, t.mtime)
	}
	if err == nil && !identical {
		if err = run.root.Rename(filepath.Join(filepath.Dir(t.rel), base), t.rel); err == nil {
			err = dir.Sync()
		}
	}
	if err != nil {
		if !identical {
			run.root.Remove(filepath.Join(filepath.Dir(t.rel), base))
		}
		run.failed(t, fp, err)
		return
	}
	if identical {
		run.identicalWarn(t, fp, warnings)
		return
	}
	run.restored(t, fp, 0, warnings)
}

// dirMeta sets a directory's recorded metadata.
func (run *restoreRun) dirMeta(t *restoreTarget) {
	run.mu.Lock()
	fi, err := run.root.Lstat(t.rel)
	run.mu.Unlock()
	if err != nil || !fi.IsDir() {
		return // failed or skipped in makeDir, which said so
	}
	fp := run.rep.File(t.name, 0)
	same := !t.made && fileMode(t.mode) == fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) &&
		fi.ModTime().Equal(t.mtime) && sameOwner(fi, t.meta)
	d, err := run.root.Open(t.rel)
	if err != nil {
		run.failed(t, fp, fmt.Errorf("cannot open: %v", unwrapPathError(err)))
		return
	}
	warnings, err := applyMeta(nil, "", d, t)
	d.Close()
	if err == nil {
		var parent *os.File
		if parent, err = run.root.Open(filepath.Dir(t.rel)); err == nil {
			err = setTimes(parent, filepath.Base(t.rel), t.mtime)
			parent.Close()
		}
	}
	switch {
	case err != nil:
		run.failed(t, fp, err)
	case same:
		run.identicalWarn(t, fp, warnings)
	default:
		run.restored(t, fp, 0, warnings)
	}
}

// applyMeta sets owner, extended attributes and mode (in that order: a
// change of owner clears setuid and setgid) on f, or on base in dir. It
// returns what it could not set, for a warning.
func applyMeta(dir *os.File, base string, f *os.File, t *restoreTarget) (warnings []string, err error) {
	if err := setOwner(dir, base, f, t.meta); err != nil {
		warnings = append(warnings, fmt.Sprintf("owner %d:%d not restored (%v)", t.meta.UID, t.meta.GID, err))
	}
	refused, err := setXattrs(dir, base, f, t.meta)
	if err != nil {
		return warnings, err
	}
	if len(refused) > 0 {
		warnings = append(warnings, fmt.Sprintf("extended attributes not restored (not permitted, or not supported here): %s", strings.Join(refused, ", ")))
	}
	switch {
	case t.kind == proto.KindSymlink: // links have no mode of their own
	case f != nil:
		err = f.Chmod(fileMode(t.mode))
	default:
		err = chmodAt(dir, base, t.mode)
	}
	if err != nil {
		return warnings, fmt.Errorf("cannot set its mode: %v", unwrapPathError(err))
	}
	return warnings, nil
}

// tempName is a temporary name beside rel: short and of fixed length, so
// that it fits wherever rel's own name does.
func tempName(rel string) string {
	var rnd [6]byte
	rand.Read(rnd[:])
	return filepath.Join(filepath.Dir(rel), ".qbackup-"+hex.EncodeToString(rnd[:])+".tmp")
}

// The outcomes of one entry, counted and reported.

func (run *restoreRun) restored(t *restoreTarget, fp FileProgress, n int64, warnings []string) {
	run.mu.Lock()
	defer run.mu.Unlock()
	t.done = true
	run.res.Restored++
	if t.kind.HasContent() && t.leader == nil {
		run.res.Files++
	}
	run.res.Bytes += n
	run.warnLocked(t, warnings)
	fp.Done("restored", nil)
}

func (run *restoreRun) identical(t *restoreTarget, fp FileProgress) { run.identicalWarn(t, fp, nil) }

func (run *restoreRun) identicalWarn(t *restoreTarget, fp FileProgress, warnings []string) {
	run.mu.Lock()
	defer run.mu.Unlock()
	t.done = true
	run.res.Identical++
	run.warnLocked(t, warnings)
	fp.Done("identical", nil)
}

func (run *restoreRun) warnLocked(t *restoreTarget, warnings []string) {
	for _, w := range warnings {
		run.rep.Warn("%s: %s", proto.Quote(t.name), w)
	}
	if len(warnings) > 0 {
		run.res.Incomplete++
	}
}

func (run *restoreRun) skipped(t *restoreTarget, format string, args ...any) {
	run.skippedFile(t, nil, format, args...)
}

func (run *restoreRun) skippedFile(t *restoreTarget, fp FileProgress, format string, args ...any) {
	run.mu.Lock()
	defer run.mu.Unlock()
	run.res.Skipped++
	why := fmt.Errorf("%s: not restored: %s", t.dest, fmt.Sprintf(format, args...))
	if run.res.FirstSkip == nil {
		run.res.FirstSkip = why
	}
	run.rep.Warn("%v", why)
	if fp != nil {
		fp.Done("skipped", nil)
	}
}

func (run *restoreRun) failed(t *restoreTarget, fp FileProgress, err error) {
	run.mu.Lock()
	defer run.mu.Unlock()
	run.res.fail(fmt.Errorf("%s: %w", proto.Quote(t.name), err))
	if fp != nil {
		fp.Done("", err)
	} else {
		run.rep.Warn("%s: %v", proto.Quote(t.name), err)
	}
}

// describeMode names the kind of file a mode describes.
func describeMode(m fs.FileMode) string {
	if k, ok := kindOf(m); ok {
		return k.String()
	}
	return "file"
}

// restoreTargets restores content targets over the session, 8 at a time,
// and counts the outcomes. With keepLost, targets that failed because the
// session itself ended are not counted but returned, with what arrived of
// them, to be resumed over a new session.
func (s *Session) restoreTargets(ctx context.Context, run *restoreRun, targets []*restoreTarget, keepLost bool) (lost []*restoreTarget) {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var wg sync.WaitGroup
	var received atomic.Int64
	defer func() {
		run.mu.Lock()
		run.res.Received += received.Load()
		run.mu.Unlock()
	}()
	next := make(chan *restoreTarget)
	for range min(8, len(targets)) {
		wg.Go(func() {
			for t := range next {
				fp := run.rep.File(t.name, t.size)
				n, identical, warnings, err := s.restoreFile(ctx, run, t, keepLost, fp, &received)
				switch {
				case err != nil && keepLost && ctx.Err() == nil && s.endedBy(err):
					run.mu.Lock()
					lost = append(lost, t)
					run.mu.Unlock()
					fp.Done("interrupted", nil)
				case errors.Is(err, errNoSpace):
					run.mu.Lock()
					if run.res.NoSpace == nil {
						run.res.NoSpace = err
					}
					run.res.NotStarted++ // not restored; the run again will
					run.mu.Unlock()
					fp.Done("not restored: out of space", nil)
					stop(err)
				case err != nil && ctx.Err() != nil:
					t.dropPart()
					run.notStarted(1)
					fp.Done("interrupted", nil)
				case errors.As(err, new(*skipError)):
					run.skippedFile(t, fp, "%v", err)
				case err != nil:
					t.dropPart() // kept just as ctx ended, say
					run.failed(t, fp, err)
				case identical:
					run.identicalWarn(t, fp, warnings)
				default:
					run.restored(t, fp, n, warnings)
				}
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
		switch {
		case keepLost && s.Err() != nil && ctx.Err() == nil:
			lost = append(lost, rest...)
		case ctx.Err() != nil:
			for _, t := range rest {
				t.dropPart()
			}
			run.notStarted(len(rest))
		default:
			for _, t := range rest {
				t.dropPart()
				run.failed(t, nil, cmp.Or(s.Err(), errors.New("the session ended")))
			}
		}
	}
	return lost
}

// errNoSpace marks a restore stopped for want of space.
var errNoSpace = errors.New("out of disk space")

// skipError marks an entry not restored on purpose, and says why.
type skipError struct{ why string }

func (e *skipError) Error() string { return e.why }

func skip(format string, args ...any) error { return &skipError{fmt.Sprintf(format, args...)} }

// spaceGate lets files be written in parallel as long as the disk holds
// them all: a file whose space cannot be reserved waits until it is the
// only one being written, and tries again, so that a restore that would
// fit one file at a time never fails for writing two at once.
type spaceGate struct {
	mu    sync.Mutex
	cond  *sync.Cond
	busy  int  // files holding the gate
	alone bool // one holds it alone
}

func (g *spaceGate) enter(alone bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.alone || (alone && g.busy > 0) {
		g.cond.Wait()
	}
	g.busy++
	g.alone = alone
}

func (g *spaceGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.busy--
	g.alone = false
	g.cond.Broadcast()
}

// existing compares what is at t's place with t: nothing there (false,
// nil), the entry as stored (true), or an error saying what is in the way
// (a skipError, without Overwrite, or when it is a directory).
func (run *restoreRun) existing(t *restoreTarget) (same bool, err error) {
	dir, release, err := run.dirOf(t)
	if err != nil {
		return false, err
	}
	defer release()
	base := filepath.Base(t.rel)
	k, size, err := lstatAt(dir, base)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cannot look at %s: %v", t.dest, unwrapPathError(err))
	}
	if k == t.kind && (size == t.size || k == proto.KindSymlink) {
		crc, sha, err := checksumsAt(dir, base, k, t.size)
		if err == nil && crc == t.crc && sha == t.sha {
			return true, nil
		}
	}
	switch {
	case k == proto.KindDir:
		return false, skip("a directory is in the way")
	case !run.overwrite:
		return false, skip("it exists and differs from the stored %v; use --overwrite to replace it", t.kind)
	}
	return false, nil
}

// checksumsAt returns the checksums of the content of name in dir: a
// link's target, or size bytes of a file.
func checksumsAt(dir *os.File, name string, k proto.Kind, size int64) (uint32, [32]byte, error) {
	if k == proto.KindSymlink {
		target, err := readlinkAt(dir, name)
		if err != nil {
			return 0, [32]byte{}, err
		}
		return proto.FileChecksums(strings.NewReader(target), int64(len(target)))
	}
	f, err := openAt(dir, name, os.O_RDONLY, 0)
	if err != nil {
		return 0, [32]byte{}, err
	}
	defer f.Close()
	return proto.FileChecksums(f, size)
}

// restoreFile restores one file or symbolic link: identical if it is
// there as stored already (its metadata is set all the same); otherwise
// fetched, verified and moved into place, retrying a transfer whose
// checksum does not match up to maxResends times. With keep, a restore
// cut off by the end of the session leaves t.part for the next session to
// resume.
func (s *Session) restoreFile(ctx context.Context, run *restoreRun, t *restoreTarget, keep bool, fp FileProgress, received *atomic.Int64) (n int64, identical bool, warnings []string, err error) {
	if t.part == nil {
		same, err := run.existing(t)
		if err != nil {
			return 0, false, nil, err
		}
		if same {
			fp.Add(t.size)
			warnings, err := run.setExisting(t)
			return 0, err == nil, warnings, err
		}
	}
	sparse := len(t.meta.Holes) > 0
	alone := false
	run.space.enter(alone)
	defer run.space.leave()
	var lastErr error
	for attempt := 0; attempt <= maxResends; {
		n, warnings, err := s.restoreOnce(ctx, run, t, keep, sparse, fp, received)
		switch {
		case err == nil:
			return n, false, warnings, nil
		case errors.Is(err, errResumeRefused):
			fp.Retry() // t.part is gone: start afresh, no attempt lost
			continue
		case errors.Is(err, errReserve) && !alone:
			// Others are being written: wait until this one is alone.
			run.space.leave()
			alone = true
			run.space.enter(alone)
			fp.Retry()
			continue
		case errors.Is(err, errReserve) || isNoSpace(err):
			return 0, false, nil, fmt.Errorf("%w: %s needs %s", errNoSpace, t.dest, formatBytes(t.size))
		case !errors.Is(err, errRestoreMismatch):
			return 0, false, nil, err
		}
		lastErr = err
		if attempt++; attempt <= maxResends {
			fp.Retry()
		}
	}
	return 0, false, nil, fmt.Errorf("%w after %d attempts", lastErr, maxResends+1)
}

// errReserve means a file's space could not be reserved.
var errReserve = errors.New("no space to reserve")

// isNoSpace reports whether err means the destination's disk is full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// setExisting sets t's recorded metadata on the entry at its place, which
// holds t's content already.
func (run *restoreRun) setExisting(t *restoreTarget) ([]string, error) {
	dir, release, err := run.dirOf(t)
	if err != nil {
		return nil, err
	}
	defer release()
	base := filepath.Base(t.rel)
	var f *os.File
	if t.kind == proto.KindFile {
		if f, err = openAt(dir, base, os.O_RDONLY, 0); err != nil {
			return nil, fmt.Errorf("cannot open: %v", unwrapPathError(err))
		}
		defer f.Close()
	}
	warnings, err := applyMeta(dir, base, f, t)
	if err != nil {
		return warnings, err
	}
	return warnings, setTimes(dir, base, t.mtime)
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
func (s *Session) restoreOnce(ctx context.Context, run *restoreRun, t *restoreTarget, keep, sparse bool, fp FileProgress, received *atomic.Int64) (n int64, warnings []string, err error) {
	progress := func(n int64) {
		fp.Add(n)
		received.Add(n)
	}
	var sink *restoreSink
	var req proto.Message
	dir, release, err := run.dirOf(t)
	if err != nil {
		return 0, nil, err
	}
	defer release()
	p := t.part
	t.part = nil
	resuming := p != nil
	if !resuming {
		tmp := tempName(t.rel)
		f, err := openAt(dir, filepath.Base(tmp), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			if isNoSpace(err) {
				return 0, nil, fmt.Errorf("%w: %w", errReserve, err)
			}
			return 0, nil, fmt.Errorf("cannot make a file in %s: %v", filepath.Dir(t.dest), unwrapPathError(err))
		}
		p = &partialRestore{root: run.root, tmp: tmp, f: f}
		if !sparse && t.kind == proto.KindFile {
			// Reserve the whole file before fetching a byte of it.
			if err := reserve(f, t.size); err != nil {
				p.close()
				removeAt(dir, filepath.Base(tmp))
				if isNoSpace(err) {
					return 0, nil, fmt.Errorf("%w: %w", errReserve, err)
				}
				return 0, nil, fmt.Errorf("reserving %s: %v", formatBytes(t.size), err)
			}
		}
		p.direct = openDirect(f)
	}
	c := s.newCall()
	if resuming {
		req = &proto.RestoreResume{Req: c.req, Name: t.name, Version: p.version, SHA256: p.sha, Have: p.haveRanges()}
		sink = resumeSink(p, s.restoreBufs, progress)
		fp.Add(int64(p.have.Total()))
	} else {
		sink = newRestoreSink(p.f, p.direct, s.restoreBufs, progress)
		req = &proto.RestoreRequest{Req: c.req, Name: t.name, Version: uint32(t.version)}
	}
	sink.sparse = sparse
	f, tmp := p.f, p.tmp
	var ready *proto.RestoreReady
	s.mu.Lock()
	s.pending[c.req] = sink
	s.mu.Unlock()
	status := proto.DoneFailed
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
		removeAt(dir, filepath.Base(tmp)) // gone already after a successful rename
	}()
	if err := s.send(req); err != nil {
		return 0, nil, err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		var pe *proto.Error
		if resuming && errors.As(err, &pe) && pe.Code == proto.CodeNotFound {
			return 0, nil, fmt.Errorf("%w: %v", errResumeRefused, err)
		}
		return 0, nil, err
	}
	var ok bool
	ready, ok = m.(*proto.RestoreReady)
	if !ok {
		return 0, nil, proto.Errorf(proto.CodeProtocol, "server answered a restore with %v", m.Type())
	}
	if ready.Name != t.name || ready.Kind != t.kind || ready.SHA256 != t.sha || ready.Size != uint64(t.size) {
		return 0, nil, proto.Errorf(proto.CodeProtocol, "asked for version %d of %q, server sent version %d of %q, another entry", t.version, proto.Quote(t.name), ready.Version, proto.Quote(ready.Name))
	}
	select {
	case <-sink.done:
	case m := <-c.ch:
		if e, ok := m.(*proto.ErrorMessage); ok {
			return 0, nil, e.Err()
		}
		return 0, nil, proto.Errorf(proto.CodeProtocol, "server sent %v during a restore", m.Type())
	case <-ctx.Done():
		return 0, nil, context.Cause(ctx)
	case <-s.ctx.Done():
		return 0, nil, s.Err()
	}
	if sink.err != nil {
		return 0, nil, sink.err
	}
	crc, sha, err := sink.checksums()
	if err != nil {
		return 0, nil, err
	}
	if crc != ready.CRC || sha != ready.SHA256 {
		status = proto.DoneMismatch // the server may check its copy
		return 0, nil, fmt.Errorf("%s: %w (cksum %d, stored %d)", proto.Quote(t.name), errRestoreMismatch, crc, ready.CRC)
	}
	if t.kind == proto.KindSymlink {
		warnings, err = installLink(dir, t, f)
	} else {
		warnings, err = installFile(dir, t, f, p, filepath.Base(tmp))
	}
	if err != nil {
		return 0, warnings, err
	}
	status = proto.DoneVerified
	return int64(ready.Size), warnings, nil
}

// installFile gives a verified file, tmp in dir, its holes and metadata,
// makes it durable and moves it into place.
func installFile(dir *os.File, t *restoreTarget, f *os.File, p *partialRestore, tmp string) ([]string, error) {
	if len(t.meta.Holes) > 0 {
		if err := punchHoles(f, t.meta.Holes); err != nil {
			return nil, fmt.Errorf("making holes: %v", err)
		}
	}
	warnings, err := applyMeta(dir, tmp, f, t)
	if err != nil {
		return warnings, err
	}
	if err := f.Sync(); err != nil {
		return warnings, err
	}
	if err := p.close(); err != nil {
		return warnings, err
	}
	if err := setTimes(dir, tmp, t.mtime); err != nil {
		return warnings, err
	}
	if err := renameAt(dir, tmp, filepath.Base(t.rel)); err != nil {
		return warnings, fmt.Errorf("cannot move into place: %v", unwrapPathError(err))
	}
	return warnings, dir.Sync()
}

// installLink makes the verified target in f a symbolic link at t's
// place in dir.
func installLink(dir *os.File, t *restoreTarget, f *os.File) ([]string, error) {
	target, err := io.ReadAll(io.NewSectionReader(f, 0, t.size))
	if err != nil {
		return nil, err
	}
	tmp := filepath.Base(tempName(t.rel))
	if err := symlinkAt(string(target), dir, tmp); err != nil {
		return nil, fmt.Errorf("cannot make the link: %v", err)
	}
	warnings, err := applyMeta(dir, tmp, nil, t)
	if err == nil {
		if err = setTimes(dir, tmp, t.mtime); err == nil {
			if err = renameAt(dir, tmp, filepath.Base(t.rel)); err == nil {
				return warnings, dir.Sync()
			}
		}
	}
	removeAt(dir, tmp)
	return nil, fmt.Errorf("cannot put the link in place: %v", unwrapPathError(err))
}

// pickVersion keeps the entry of one version of name from a listing of
// all versions.
func pickVersion(all []proto.ListEntry, name string, version int) ([]proto.ListEntry, error) {
	var latest uint32
	sawDir := false
	for _, e := range all {
		if e.Name != name || e.Kind == proto.KindDir { // a directory's versions hold its metadata, not its tree
			sawDir = true
			continue
		}
		if int(e.Version) == version {
			return []proto.ListEntry{e}, nil
		}
		latest = max(latest, e.Version)
	}
	switch {
	case sawDir:
		return nil, fmt.Errorf("--version needs the name of one entry, and %q is a directory", proto.Quote(name))
	case latest > 0:
		return nil, fmt.Errorf("%s has no version %d; its versions are 1 to %d (see qbackup ls --versions %s)", proto.Quote(name), version, latest, proto.Quote(name))
	}
	return nil, nil // nothing at all: planRestore says so
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Checking stored versions. A stored file can go bad after its commit (a
// failing disk, a stray write by hand), and nothing would notice until a
// restore failed. A check reads a version's file and compares it with
// the size and checksums recorded at commit; it marks a version that no
// longer matches as damaged (FileVersion.Damaged: the server refuses to
// restore it, and the next upload of the same content heals it, see
// Upload.Commit), and clears the mark of one found intact again. The
// caller computes the checksums (a SumFunc), as it does for Commit, so the
// store still imports nothing else from this module.
//
// Checks run beside uploads, restores and heals: in the process that has
// the Store open (Store.Check, Store.CheckVersion) or in another one
// (Checker, while qbackupd runs). A check holds no transaction while it
// reads files: it lists versions a page at a time, each page one short
// query, so a long check keeps neither writers waiting nor SQLite's log
// from being checkpointed. A heal replaces a damaged version's file (a
// rename over it) while a check may be reading the old one; the heal sets
// checked_at, so a result is recorded only if checked_at still holds the
// value read before the file was opened, and otherwise the version is
// read again.

// SumFunc computes the cksum value and SHA-256 of the first size bytes of
// r, as the caller of Upload.Commit does. The r a check passes fails its
// reads once ctx is done.
type SumFunc func(ctx context.Context, r io.ReaderAt, size int64) (crc uint32, sha [32]byte, err error)

// Damage is what a check found wrong with a stored version.
type Damage int

const (
	DamageNone       Damage = iota // the file matches its recorded size and checksums
	DamageMissing                  // there is no stored file, or it is not a regular file
	DamageSize                     // the stored file has another size than recorded
	DamageMismatch                 // right size, but the checksums differ
	DamageUnreadable               // reading the stored file failed with an I/O error
)

func (d Damage) String() string {
	switch d {
	case DamageNone:
		return "intact"
	case DamageMissing:
		return "missing"
	case DamageSize:
		return "wrong size"
	case DamageMismatch:
		return "checksum mismatch"
	case DamageUnreadable:
		return "unreadable"
	}
	return fmt.Sprintf("damage %d", int(d))
}

// CheckResult is what a check found for one version, and recorded.
type CheckResult struct {
	Client     ClientID
	ClientName string
	Name       string
	Version    int
	Size       int64 // as recorded
	WasDamaged bool  // the version was marked damaged before this check
	Damage     Damage
	Detail     string // what is wrong, for people ("12 bytes, want 13"); "" if intact
	Read       int64  // bytes read
}

// CheckOptions says what Check checks.
type CheckOptions struct {
	// Client, if not "", limits the check to the versions of the client
	// of this name; Check fails with ErrUnknownClient if there is none.
	Client string
	// DueBefore, if not zero, limits the check to versions stored and
	// last checked before it, so that a periodic check reads each version
	// once per period, whenever the process started.
	DueBefore time.Time
	// Sum computes the checksums of a stored file. Required.
	Sum SumFunc
	// Checked, if not nil, is called with the result of each version
	// checked, once it is recorded.
	Checked func(CheckResult)
}

// CheckStats sums up a Check.
type CheckStats struct {
	Clients  int   // clients with versions checked
	Versions int   // versions checked
	Bytes    int64 // bytes read
	Damaged  int   // versions found damaged, and so marked
	Cleared  int   // versions marked damaged before that were found intact
	// Changing counts versions not checked because every time they were
	// read a heal or another check changed them meanwhile.
	Changing int
}

// Check reads the stored versions o selects and compares each with its
// recorded size and checksums: it marks those that no longer match as
// damaged and clears the mark of those that match again (see the comment
// at the top of check.go). It reads one file at a time. A version that
// is damaged is not an error; o.Checked hears of it, and the stats count
// it.
func (s *Store) Check(ctx context.Context, o CheckOptions) (CheckStats, error) {
	return s.checker().check(ctx, o)
}

// CheckVersion checks the given version of the client's file, as Check
// does, and records the result. It fails with ErrNotFound if there is no
// such version; recorded is false if the version changed under every
// attempt to read it (a heal, or another check), and then nothing was
// recorded.
func (s *Store) CheckVersion(ctx context.Context, id ClientID, name string, version int, sum SumFunc) (r CheckResult, recorded bool, err error) {
	if err := ValidateName(name); err != nil {
		return CheckResult{}, false, err
	}
	if sum == nil {
		return CheckResult{}, false, errors.New("store: check without a checksum function")
	}
	vc := s.checker()
	it, found, err := vc.reread(ctx, id, name, version)
	if err != nil {
		return CheckResult{}, false, err
	}
	if !found {
		return CheckResult{}, false, fmt.Errorf("%w: %q version %d", ErrNotFound, name, version)
	}
	return vc.checkOne(ctx, it, sum, checkAttempts)
}

func (s *Store) checker() *versionChecker {
	return &versionChecker{db: s.db, root: s.root, lock: s.lockWrite, unlock: s.unlockWrite}
}

// Checker checks the stored versions of a store from outside the process
// that has it open: qbackupd check, while the server runs. Like
// InviteBook, it opens the database without the Store's lock; SQLite
// serialises its writes with the server's, and a check result is
// recorded only if no heal changed the version meanwhile.
type Checker struct {
	vc versionChecker
}

// OpenChecker opens the store in dir for checking. The store must exist
// and have the current schema: a qbackupd of this version has opened it.
func OpenChecker(ctx context.Context, dir string) (*Checker, error) {
	abs, db, err := openBeside(ctx, dir)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	return &Checker{vc: versionChecker{db: db, root: root}}, nil
}

// Check is Store.Check.
func (c *Checker) Check(ctx context.Context, o CheckOptions) (CheckStats, error) {
	return c.vc.check(ctx, o)
}

// Close closes the checker.
func (c *Checker) Close() error {
	return errors.Join(c.vc.db.Close(), c.vc.root.Close())
}

// checkPage is how many versions one listing query returns (a variable
// for tests).
var checkPage = 256

// checkAttempts bounds how often one version is read again because a heal
// or another check changed it while it was read.
const checkAttempts = 3

// Results are recorded in batches: one write transaction for up to
// checkBatch versions, or for those read within checkDelay, whichever
// comes first. A transaction per version would cost the disk a sync each,
// which for a store of small files takes longer than reading them.
// Damage is recorded at once, with the results read before it.
const (
	checkBatch = 128
	checkDelay = time.Second
)

// checked is a version read whose result is not recorded yet.
type checked struct {
	it checkItem
	r  CheckResult
}

// versionChecker is what checking needs of an open store; Store and
// Checker share it.
type versionChecker struct {
	db   *sql.DB
	root *os.Root
	// lock and unlock, if not nil, serialise the writes with the
	// process's other writes (Store.lockWrite).
	lock   func(context.Context) error
	unlock func()
}

// checkItem is one version to check, as listed.
type checkItem struct {
	client     ClientID
	clientName string
	name       string
	version    int
	size       int64
	crc        uint32
	sha        [32]byte
	damaged    bool
	checkedAt  int64 // unix nanoseconds; the guard of the result's write
	path       string
}

const checkColumns = "client_id, name, version, size, crc, sha256, damaged, checked_at, path, " +
	"(SELECT clients.name FROM clients WHERE clients.id = files.client_id)"

func scanCheckItem(r scanner) (checkItem, error) {
	var (
		it       checkItem
		id, sha  []byte
		crc      int64
		cname    sql.NullString
		damaged  bool
		checkedN int64
	)
	if err := r.Scan(&id, &it.name, &it.version, &it.size, &crc, &sha, &damaged, &checkedN, &it.path, &cname); err != nil {
		return checkItem{}, err
	}
	if len(id) != len(it.client) || len(sha) != len(it.sha) {
		return checkItem{}, fmt.Errorf("client_id or sha256 column of %q version %d has the wrong length", it.name, it.version)
	}
	copy(it.client[:], id)
	copy(it.sha[:], sha)
	it.crc = uint32(crc)
	it.clientName = cname.String
	it.damaged = damaged
	it.checkedAt = checkedN
	return it, nil
}

// check implements Store.Check and Checker.Check.
func (vc *versionChecker) check(ctx context.Context, o CheckOptions) (CheckStats, error) {
	var st CheckStats
	if o.Sum == nil {
		return st, errors.New("store: check without a checksum function")
	}
	var only *ClientID
	if o.Client != "" {
		id, err := vc.clientID(ctx, o.Client)
		if err != nil {
			return st, err
		}
		only = &id
	}
	var (
		last     ClientID
		haveLast bool
		pending  []checked // read, not yet recorded
		since    time.Time // when the first of pending was read
	)
	done := func(r CheckResult) {
		if !haveLast || r.Client != last {
			st.Clients++
			last, haveLast = r.Client, true
		}
		st.Versions++
		st.Bytes += r.Read
		switch {
		case r.Damage != DamageNone:
			st.Damaged++
		case r.WasDamaged:
			st.Cleared++
		}
		if o.Checked != nil {
			o.Checked(r)
		}
	}
	flush := func() error {
		ok, err := vc.record(ctx, pending)
		if err != nil {
			return err
		}
		for i, p := range pending {
			r := p.r
			if !ok[i] {
				// A heal or another check changed it meanwhile: read
				// it again.
				it, found, err := vc.reread(ctx, p.it.client, p.it.name, p.it.version)
				if err != nil {
					return err
				}
				recorded := false
				if found {
					if r, recorded, err = vc.checkOne(ctx, it, o.Sum, checkAttempts-1); err != nil {
						return err
					}
				}
				if !recorded {
					st.Changing++
					continue
				}
			}
			done(r)
		}
		pending = pending[:0]
		return nil
	}
	err := vc.walk(ctx, only, o.DueBefore, func(it checkItem) error {
		r, err := vc.read(ctx, it, o.Sum)
		if err != nil {
			return err
		}
		if len(pending) == 0 {
			since = time.Now()
		}
		pending = append(pending, checked{it, r})
		if r.Damage != DamageNone || len(pending) >= checkBatch || time.Since(since) >= checkDelay {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return st, err
}

// clientID returns the ID of the client called name, or ErrUnknownClient.
func (vc *versionChecker) clientID(ctx context.Context, name string) (ClientID, error) {
	var id ClientID
	var raw []byte
	err := vc.db.QueryRowContext(ctx, "SELECT id FROM clients WHERE name = ?", name).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return id, fmt.Errorf("%w: no client named %q", ErrUnknownClient, name)
	}
	if err != nil {
		return id, wrapDB("look up client", err)
	}
	copy(id[:], raw)
	return id, nil
}

// walk calls fn with each stored version, of the client only if not nil,
// stored and last checked before due if that is not zero, in the order
// of client ID, name and version. It reads them a page at a time and
// calls fn with no query open.
func (vc *versionChecker) walk(ctx context.Context, only *ClientID, due time.Time, fn func(checkItem) error) error {
	// Each page starts after the last version of the one before: a
	// search of the primary key, however far the walk has got.
	q := "SELECT " + checkColumns + " FROM files WHERE (client_id, name, version) > (?, ?, ?)"
	if only != nil {
		q = "SELECT " + checkColumns + " FROM files WHERE client_id = ? AND (name, version) > (?, ?)"
	}
	var extra []any
	if !due.IsZero() {
		q += " AND max(stored_at, checked_at) < ?"
		extra = append(extra, due.UnixNano())
	}
	q += " ORDER BY client_id, name, version LIMIT ?"
	extra = append(extra, checkPage)
	args := func(last checkItem) []any {
		if only != nil {
			return append([]any{only[:], last.name, last.version}, extra...)
		}
		return append([]any{last.client[:], last.name, last.version}, extra...)
	}
	page := make([]checkItem, 0, checkPage)
	var last checkItem // the zero value sorts before every version
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		rows, err := vc.db.QueryContext(ctx, q, args(last)...)
		if err != nil {
			return wrapDB("list versions to check", err)
		}
		page = page[:0]
		for rows.Next() {
			it, err := scanCheckItem(rows)
			if err != nil {
				rows.Close()
				return wrapDB("list versions to check", err)
			}
			page = append(page, it)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return wrapDB("list versions to check", err)
		}
		for _, it := range page {
			if err := fn(it); err != nil {
				return err
			}
		}
		if len(page) < checkPage {
			return nil
		}
		last = page[len(page)-1]
	}
}

// reread returns the version it describes as it is now, or false if it
// is gone.
func (vc *versionChecker) reread(ctx context.Context, id ClientID, name string, version int) (checkItem, bool, error) {
	it, err := scanCheckItem(vc.db.QueryRowContext(ctx,
		"SELECT "+checkColumns+" FROM files WHERE client_id = ? AND name = ? AND version = ?", id[:], name, version))
	if errors.Is(err, sql.ErrNoRows) {
		return checkItem{}, false, nil
	}
	if err != nil {
		return checkItem{}, false, wrapDB("look up version to check", err)
	}
	return it, true, nil
}

// checkOne checks one version and records the result, reading it again
// if a heal or another check changed it meanwhile, up to attempts times
// in all. recorded is false if it changed every time (or is gone): then
// nothing was recorded.
func (vc *versionChecker) checkOne(ctx context.Context, it checkItem, sum SumFunc, attempts int) (r CheckResult, recorded bool, err error) {
	for attempt := 1; ; attempt++ {
		r, err = vc.read(ctx, it, sum)
		if err != nil {
			return r, false, err
		}
		ok, err := vc.record(ctx, []checked{{it, r}})
		if err != nil || ok[0] {
			return r, err == nil, err
		}
		if attempt >= attempts {
			return r, false, nil
		}
		var found bool
		if it, found, err = vc.reread(ctx, it.client, it.name, it.version); err != nil || !found {
			return r, false, err
		}
	}
}

// read reads the stored file of it and says what is wrong with it. Errors
// that are the file's (gone, another size, unreadable) are damage; others
// (the context ended, no permission) fail the check.
func (vc *versionChecker) read(ctx context.Context, it checkItem, sum SumFunc) (CheckResult, error) {
	r := CheckResult{
		Client: it.client, ClientName: it.clientName,
		Name: it.name, Version: it.version, Size: it.size, WasDamaged: it.damaged,
	}
	damaged := func(d Damage, format string, args ...any) (CheckResult, error) {
		r.Damage, r.Detail = d, fmt.Sprintf(format, args...)
		return r, nil
	}
	if err := checkInClientDir(it.client, it.path); err != nil {
		return r, err
	}
	rel := filepath.FromSlash(it.path)
	// Lstat first: opening a FIFO put in a version's place would block.
	st, err := vc.root.Lstat(rel)
	if isGone(err) {
		return damaged(DamageMissing, "no stored file")
	}
	if err != nil {
		return r, fmt.Errorf("store: check %q version %d: %w", it.name, it.version, err)
	}
	if !st.Mode().IsRegular() {
		return damaged(DamageMissing, "not a regular file (%v)", st.Mode().Type())
	}
	f, err := vc.root.OpenFile(rel, os.O_RDONLY, 0)
	if isGone(err) {
		return damaged(DamageMissing, "no stored file")
	}
	if err != nil {
		return r, fmt.Errorf("store: check %q version %d: %w", it.name, it.version, err)
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return r, fmt.Errorf("store: check %q version %d: %w", it.name, it.version, err)
	}
	if !st.Mode().IsRegular() {
		return damaged(DamageMissing, "not a regular file (%v)", st.Mode().Type())
	}
	if st.Size() != it.size {
		return damaged(DamageSize, "%d bytes, want %d", st.Size(), it.size)
	}
	cr := &checkReader{ctx: ctx, f: f, size: it.size, short: -1}
	crc, sha, err := sum(ctx, cr, it.size)
	r.Read = cr.read
	switch {
	case ctx.Err() != nil:
		return r, fmt.Errorf("store: %w", ctx.Err())
	case cr.short >= 0:
		return damaged(DamageSize, "ends after %d bytes, want %d", cr.short, it.size)
	case cr.ioErr != nil:
		return damaged(DamageUnreadable, "%v", cr.ioErr)
	case err != nil:
		return r, fmt.Errorf("store: check %q version %d: %w", it.name, it.version, err)
	case crc != it.crc || sha != it.sha:
		return damaged(DamageMismatch, "cksum %d, SHA-256 %x…; recorded cksum %d, SHA-256 %x…", crc, sha[:4], it.crc, it.sha[:4])
	}
	return r, nil
}

// isGone reports whether err says a stored file, or a directory on its
// path, is not there.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// record writes the results of checks in one transaction: each only if
// its version's checked_at is still what it was when it was listed (see
// the comment at the top of this file); ok[i] reports whether that of
// list[i] was.
func (vc *versionChecker) record(ctx context.Context, list []checked) (ok []bool, err error) {
	if len(list) == 0 {
		return nil, nil
	}
	if vc.lock != nil {
		if err := vc.lock(ctx); err != nil {
			return nil, err
		}
		defer vc.unlock()
	}
	tx, err := vc.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, wrapDB("begin", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx,
		"UPDATE files SET damaged = ?, checked_at = ? WHERE client_id = ? AND name = ? AND version = ? AND checked_at = ?")
	if err != nil {
		return nil, wrapDB("record check", err)
	}
	defer stmt.Close()
	ok = make([]bool, len(list))
	now := time.Now().UnixNano()
	for i, c := range list {
		at := max(now, c.it.checkedAt+1) // the guard's value must change
		res, err := stmt.ExecContext(ctx, c.r.Damage != DamageNone, at, c.it.client[:], c.it.name, c.it.version, c.it.checkedAt)
		if err != nil {
			return nil, wrapDB("record check", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, wrapDB("record check", err)
		}
		ok[i] = n == 1
	}
	if err := tx.Commit(); err != nil {
		return nil, wrapDB("record check", err)
	}
	return ok, nil
}

// dropLag is how far before a read a checkReader drops pages from the
// page cache.
const dropLag = 4 << 20

// checkReader reads a stored file for a check: it fails once ctx is
// done, notes where the file ended early or an I/O error (damage, not a
// failure of the check), counts what it read, and lets the kernel drop
// what it read from the page cache, so that a check of the whole store
// does not push out what the server's transfers use.
type checkReader struct {
	ctx   context.Context
	f     *os.File
	size  int64
	read  int64
	short int64 // where the file ended before size, or -1
	ioErr error
}

func (c *checkReader) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.f.ReadAt(p, off)
	c.read += int64(n)
	if n > 0 {
		// From a little before off: the page cache may hold the file in
		// folios larger than a read (up to 2 MiB on Linux 6), and only
		// a folio the range covers whole is dropped.
		from := max(0, off-dropLag)
		dropCache(c.f, from, off+int64(n)-from)
	}
	switch {
	case err == io.EOF && off+int64(n) < c.size && n < len(p):
		c.short = off + int64(n)
	case err != nil && err != io.EOF && errors.Is(err, syscall.EIO):
		c.ioErr = err
	}
	return n, err
}

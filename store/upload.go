package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// errUploadLost is returned by an Upload whose temp file could not be put
// back after a failed Commit; only Discard is useful then.
var errUploadLost = errors.New("store: upload's temp file was lost in a failed commit; discard the upload")

// Upload is a file being received: a sparse temp file of the final size,
// written at arbitrary offsets, then committed as a new version or
// discarded, or released to be resumed later (see ResumeUpload). A new
// upload gets its row in the database at its first Checkpoint: most small
// files are committed before that, and so cost no row at all. WriteAt,
// ReadAt and Checkpoint may be called concurrently (at disjoint ranges, for
// writes); Commit, Discard and Release wait for calls in progress and make
// all later calls fail with ErrUploadDone.
type Upload struct {
	s      *Store
	id     [16]byte
	client ClientID
	name   string
	size   int64
	mtime  int64 // unix nanoseconds
	mode   uint32
	kind   uint8
	meta   []byte
	temp   string // temp file, relative to the store directory

	mu   sync.RWMutex // read-locked by WriteAt/ReadAt/Checkpoint, locked by Commit/Discard/Release/Close
	f    *os.File     // nil once closed
	done bool

	// rowed: the upload has a row in the uploads table (a resumed one
	// always; a new one from its first Checkpoint). Set under ckMu and a
	// read lock of mu, so Commit, Discard and Release see it settled.
	rowed atomic.Bool

	// ckMu serialises Checkpoint calls, so that the blobs reach the row
	// in the order of the calls. It is taken before mu.
	ckMu      sync.Mutex
	dirSynced bool // tmp/ was fsynced since this Upload was made; under ckMu

	healed bool // Commit replaced a damaged version's file; set under mu
}

// NewUpload starts receiving version data for the client's file name: size
// bytes, with the client's modification time and permission bits, recorded
// in the version at Commit. It creates the temp file (sparse, already of
// the final size); the upload row follows at the first Checkpoint, so an
// upload that is never checkpointed leaves nothing in the database, and a
// crash leaves only its temp file, which Open removes. It fails with
// ErrInvalidName, ErrUploadSize (size outside [0, MaxUploadSize]),
// ErrUnknownClient or ErrNoSpace.
func (s *Store) NewUpload(ctx context.Context, id ClientID, name string, size int64, mtime time.Time, mode uint32) (*Upload, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if size < 0 || size > MaxUploadSize {
		return nil, fmt.Errorf("%w: size %d not in [0, %d]", ErrUploadSize, size, int64(MaxUploadSize))
	}
	mtimeNS := mtime.UnixNano()
	if !time.Unix(0, mtimeNS).Equal(mtime) {
		return nil, fmt.Errorf("store: modification time %v cannot be stored (years 1678 to 2261 only)", mtime)
	}
	u := &Upload{s: s, client: id, name: name, size: size, mtime: mtimeNS, mode: mode}
	rand.Read(u.id[:])
	u.temp = tempPath(u.id)

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("store: closed")
	}

	if err := s.checkClient(ctx, id); err != nil {
		return nil, err
	}
	f, err := s.createTemp(u.temp)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		s.root.Remove(filepath.FromSlash(u.temp))
		return nil, wrapIO("size temp file", err)
	}
	u.f = f

	if err := s.register(u); err != nil {
		return nil, err
	}
	return u, nil
}

// checkClient fails with ErrUnknownClient unless the client is
// registered. The row of an unknown client's upload would fail at its
// first Checkpoint or Commit anyway, but NewUpload says so at once.
// Clients are never removed, so one found is remembered, and the next
// upload of the client costs no query.
func (s *Store) checkClient(ctx context.Context, id ClientID) error {
	if _, ok := s.known.Load(id); ok {
		return nil
	}
	var n int
	if err := s.db.QueryRowContext(point(ctx), "SELECT count(*) FROM clients WHERE id = ?", id[:]).Scan(&n); err != nil {
		return wrapDB("look up client", err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrUnknownClient, id)
	}
	s.known.Store(id, struct{}{})
	return nil
}

// register records u, whose file is open, as open in s. If Close ran
// meanwhile, it cannot have seen u, so register closes u's file itself;
// row and file stay, like those of other open uploads at Close.
func (s *Store) register(u *Upload) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		u.closeFile()
		return errors.New("store: closed")
	}
	s.uploads[u.id] = u
	return nil
}

// ResumeUpload continues an upload that an earlier session (of this
// process, or of one that stopped or crashed) left unfinished: the most
// recently updated upload of the client's file name with the given size and
// modification time (to the nanosecond) that is not open in this Store and
// whose ID skip does not reject. skip reports uploads in use by a live
// session; nil rejects none. It returns the upload, with its temp file open
// for writing, and the ranges blob of its last Checkpoint, or nil if it was
// never checkpointed. Only the bytes that blob describes are known to be in
// the temp file; the rest of it may hold anything. The upload keeps the
// mode it was created with. Resuming counts as activity for PurgeUploads.
//
// Uploads of the same client and name whose size or modification time
// differ are stale (the file changed since), so ResumeUpload discards them,
// temp file and row, unless they are open in this Store or skip rejects
// them. If the temp file of the chosen upload is missing or has the wrong
// size, ResumeUpload discards that upload and returns ErrNotFound; it does
// not fall back to an older candidate.
//
// ResumeUpload fails with ErrNotFound if there is nothing to resume (this
// includes an unknown client), ErrInvalidName, ErrUploadSize (size outside
// [0, MaxUploadSize]) or ErrNoSpace. skip is called with the Store's write
// lock held: it must not call methods of s. Concurrent ResumeUpload calls
// never return the same upload: an upload is open in this Store from the
// moment ResumeUpload picks it until Commit, Discard or Release.
func (s *Store) ResumeUpload(ctx context.Context, id ClientID, name string, size int64, mtime time.Time, skip func(uploadID [16]byte) bool) (*Upload, []byte, error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, err
	}
	if size < 0 || size > MaxUploadSize {
		return nil, nil, fmt.Errorf("%w: size %d not in [0, %d]", ErrUploadSize, size, int64(MaxUploadSize))
	}
	mtimeNS := mtime.UnixNano()
	if !time.Unix(0, mtimeNS).Equal(mtime) {
		// No upload can have this time: NewUpload refuses it.
		return nil, nil, fmt.Errorf("%w: no upload of %q to resume", ErrNotFound, name)
	}
	// Usually there is none: say so without the write lock, which a group
	// commit holds while it waits for the disk. (An upload of the name
	// created meanwhile could not have been resumed anyway.)
	var any int
	err := s.db.QueryRowContext(point(ctx), "SELECT count(*) FROM uploads WHERE client_id = ? AND name = ?", id[:], name).Scan(&any)
	if err != nil {
		return nil, nil, wrapDB("look up uploads", err)
	}
	if any == 0 {
		return nil, nil, fmt.Errorf("%w: no upload of %q to resume", ErrNotFound, name)
	}
	if err := s.lockWrite(ctx); err != nil {
		return nil, nil, err
	}
	defer s.unlockWrite()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, nil, errors.New("store: closed")
	}

	type row struct {
		id           [16]byte
		size, mtime  int64
		mode         int64
		temp         string
		ranges       []byte
		inUse, match bool
	}
	rows, err := s.db.QueryContext(ctx, `
		SELECT id, size, mtime_ns, mode, temp_path, ranges FROM uploads
		WHERE client_id = ? AND name = ?
		ORDER BY updated DESC, created DESC, rowid DESC`, id[:], name)
	if err != nil {
		return nil, nil, wrapDB("list uploads", err)
	}
	var list []row
	for rows.Next() {
		var r row
		var rid []byte
		if err := rows.Scan(&rid, &r.size, &r.mtime, &r.mode, &r.temp, &r.ranges); err != nil {
			rows.Close()
			return nil, nil, wrapDB("list uploads", err)
		}
		copy(r.id[:], rid)
		r.match = r.size == size && r.mtime == mtimeNS
		list = append(list, r)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, nil, wrapDB("list uploads", err)
	}
	s.mu.Lock()
	for i := range list {
		_, list[i].inUse = s.uploads[list[i].id]
	}
	s.mu.Unlock()

	var chosen *row
	for i := range list {
		r := &list[i]
		if r.inUse || (skip != nil && skip(r.id)) {
			continue
		}
		if !r.match {
			if err := s.deleteUpload(ctx, r.id[:], r.temp); err != nil {
				return nil, nil, err
			}
			continue
		}
		if chosen == nil {
			chosen = r
		}
	}
	if chosen == nil {
		return nil, nil, fmt.Errorf("%w: no upload of %q to resume", ErrNotFound, name)
	}

	r := chosen
	gone := func(why string) (*Upload, []byte, error) {
		if err := s.deleteUpload(ctx, r.id[:], r.temp); err != nil {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("%w: upload of %q to resume %s; discarded it", ErrNotFound, name, why)
	}
	if checkTempPath(r.temp) != nil {
		return gone("had a bad temp path")
	}
	osTemp := filepath.FromSlash(r.temp)
	damaged := func(st fs.FileInfo) bool { return !st.Mode().IsRegular() || st.Size() != size }
	st, err := s.root.Lstat(osTemp)
	if errors.Is(err, fs.ErrNotExist) {
		return gone("had lost its temp file")
	}
	if err != nil {
		return nil, nil, wrapIO("check temp file", err)
	}
	if damaged(st) {
		return gone(fmt.Sprintf("had a damaged temp file (mode %v, %d bytes, want %d)", st.Mode(), st.Size(), size))
	}
	f, err := s.root.OpenFile(osTemp, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, wrapIO("open temp file", err)
	}
	if st, err = f.Stat(); err != nil {
		f.Close()
		return nil, nil, wrapIO("check temp file", err)
	}
	if damaged(st) {
		f.Close()
		return gone(fmt.Sprintf("had a damaged temp file (mode %v, %d bytes, want %d)", st.Mode(), st.Size(), size))
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE uploads SET updated = ? WHERE id = ?", time.Now().UnixNano(), r.id[:]); err != nil {
		f.Close()
		return nil, nil, wrapDB("update upload", err)
	}
	u := &Upload{s: s, id: r.id, client: id, name: name, size: size, mtime: mtimeNS, mode: uint32(r.mode), temp: r.temp, f: f}
	u.rowed.Store(true)
	if err := s.register(u); err != nil {
		return nil, nil, err
	}
	return u, r.ranges, nil
}

// ID returns the upload's random 128-bit ID.
func (u *Upload) ID() [16]byte { return u.id }

// Size returns the size of the file being uploaded.
func (u *Upload) Size() int64 { return u.size }

// Name returns the name of the file being uploaded.
func (u *Upload) Name() string { return u.name }

// WriteAt writes p at offset off of the temp file. The range must lie in
// [0, Size()), or WriteAt fails with ErrUploadSize. A full disk or quota
// gives ErrNoSpace. Concurrent calls must write disjoint ranges.
func (u *Upload) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > u.size || int64(len(p)) > u.size-off {
		return 0, fmt.Errorf("%w: %d bytes at offset %d, upload size %d", ErrUploadSize, len(p), off, u.size)
	}
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.done {
		return 0, ErrUploadDone
	}
	if u.f == nil {
		return 0, errUploadLost
	}
	n, err := u.f.WriteAt(p, off)
	if err != nil {
		return n, wrapIO("write upload", err)
	}
	return n, nil
}

// ReadAt reads from the temp file, following io.ReaderAt (io.EOF at the
// end). It lets the caller checksum the received data before Commit.
func (u *Upload) ReadAt(p []byte, off int64) (int, error) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.done {
		return 0, ErrUploadDone
	}
	if u.f == nil {
		return 0, errUploadLost
	}
	n, err := u.f.ReadAt(p, off)
	if err != nil && err != io.EOF {
		return n, wrapIO("read upload", err)
	}
	return n, err
}

// Checkpoint makes the data written so far durable and records ranges, an
// opaque blob of at most MaxRangesLen bytes that ResumeUpload hands back;
// the caller uses it to describe the byte ranges it has written. Checkpoint
// first fsyncs the temp file (and, once per Upload, the tmp directory),
// then stores the blob and the time in the upload's row (creating the row
// at a new upload's first Checkpoint), so a stored blob
// never describes bytes that are not on disk, provided ranges describes
// only writes whose WriteAt returned before Checkpoint was called (writes
// still in progress may or may not be made durable). A nil ranges is stored
// as an empty blob.
//
// Checkpoint may be called concurrently with WriteAt, ReadAt and other
// Checkpoint calls; concurrent checkpoints are serialised, so the row ends
// up with the blob of the call that ran last. It fails with ErrUploadDone
// after Commit, Discard or Release, ErrRangesTooLarge, or ErrNoSpace. If it
// fails otherwise, the previous blob stays.
func (u *Upload) Checkpoint(ctx context.Context, ranges []byte) error {
	if len(ranges) > MaxRangesLen {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrRangesTooLarge, len(ranges), MaxRangesLen)
	}
	if ranges == nil {
		ranges = []byte{}
	}
	u.ckMu.Lock()
	defer u.ckMu.Unlock()
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.done {
		return ErrUploadDone
	}
	if u.f == nil {
		return errUploadLost
	}
	if err := u.f.Sync(); err != nil {
		return wrapIO("sync upload", err)
	}
	s := u.s
	if !u.dirSynced {
		// NewUpload does not sync tmp/, so the file's name may not be
		// durable yet. Through the handle held, not a new descriptor for
		// each of the many uploads that may checkpoint at once.
		if err := s.tmp.Sync(); err != nil {
			return wrapIO("sync directory", err)
		}
		u.dirSynced = true
	}
	if err := s.lockWrite(ctx); err != nil {
		return err
	}
	defer s.unlockWrite()
	now := time.Now().UnixNano()
	if !u.rowed.Load() {
		res, err := s.db.ExecContext(ctx, `
			INSERT INTO uploads (id, client_id, name, size, mtime_ns, mode, temp_path, ranges, created, updated)
			SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?)`,
			u.id[:], u.client[:], u.name, u.size, u.mtime, int64(u.mode), u.temp, ranges, now, now, u.client[:])
		if err != nil {
			return wrapDB("record checkpoint", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return wrapDB("record checkpoint", err)
		} else if n == 0 {
			return fmt.Errorf("%w: %s", ErrUnknownClient, u.client)
		}
		u.rowed.Store(true)
		return nil
	}
	res, err := s.db.ExecContext(ctx, "UPDATE uploads SET ranges = ?, updated = ? WHERE id = ?",
		ranges, now, u.id[:])
	if err != nil {
		return wrapDB("record checkpoint", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return wrapDB("record checkpoint", err)
	} else if n == 0 {
		return errors.New("store: upload row is gone (purged?)")
	}
	return nil
}

// Release ends this use of the upload without finishing it: it closes the
// temp file but keeps the file and the upload row, so that a later
// ResumeUpload (in this process or, after Open, in another) can continue
// it, and PurgeUploads can remove it once it is old. Release does not
// checkpoint: call Checkpoint first to keep what was written. A new upload
// that was never checkpointed has no row and nothing known to be on disk,
// so Release removes its temp file. It waits for calls in progress; later
// calls on u (Release included) fail with ErrUploadDone. The upload is
// released even if closing the file fails.
func (u *Upload) Release() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return ErrUploadDone
	}
	var err error
	if u.f != nil {
		err = u.f.Close()
		u.f = nil
	}
	u.finish()
	if err != nil {
		err = wrapIO("close temp file", err)
	}
	if !u.rowed.Load() {
		if rerr := u.s.root.Remove(filepath.FromSlash(u.temp)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, wrapIO("remove temp file", rerr))
		}
	}
	return err
}

// closeFile closes the temp file, if open. u.mu must be locked.
func (u *Upload) closeFile() {
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
}

// finish closes the upload for good. u.mu must be locked.
func (u *Upload) finish() {
	u.closeFile()
	u.done = true
	u.s.mu.Lock()
	delete(u.s.uploads, u.id)
	u.s.mu.Unlock()
}

// SetAttrs sets what Commit records beside the content: the mode, the
// kind (a proto.Kind) and the client's metadata record. Until it is
// called an upload records the mode it was made with, kind 0 (a file) and
// no metadata; a resumed upload records what its latest request said.
func (u *Upload) SetAttrs(mode uint32, kind uint8, meta []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.mode, u.kind, u.meta = mode, kind, bytes.Clone(meta)
}

// Commit stores the uploaded data, whose checksums the caller computed, as
// a version of the file. If the latest version has the same kind, size,
// CRC and SHA-256, no version is added: that version's modification time,
// mode and metadata are set to the upload's and it is returned with
// created false; if that version was marked damaged, the upload's file
// takes the place of its stored file, which heals it (Healed reports it).
// Otherwise the data becomes version latest+1 (verified) and created is
// true. Either way the upload is finished; after an error it is left as
// it was (unless the error is ErrUploadDone), so Commit can be retried or
// the upload discarded.
func (u *Upload) Commit(ctx context.Context, crc uint32, sha [32]byte) (fv FileVersion, created bool, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return FileVersion{}, false, ErrUploadDone
	}
	if u.f == nil {
		return FileVersion{}, false, errUploadLost
	}
	if err := ctx.Err(); err != nil {
		return FileVersion{}, false, fmt.Errorf("store: %w", err)
	}
	// A small file's data is made durable by its batch's syncfs; a large
	// one is synced here, outside the batch, so that concurrent commits
	// sync in parallel.
	small := haveSyncFS && u.size <= syncFSMax
	if !small {
		if err := u.f.Sync(); err != nil {
			return FileVersion{}, false, wrapIO("sync upload", err)
		}
	}
	s := u.s
	op := &batchOp{}
	op.run = func(ctx context.Context, tx *sql.Tx, b *batch) error {
		var err error
		fv, created, err = u.commitIn(ctx, tx, b, op, crc, sha)
		if err == nil && created && small {
			b.syncFS = true
		}
		return err
	}
	if err := s.apply(op); err != nil {
		if errors.Is(err, errCommitUnknown) {
			u.closeFile()
		}
		return FileVersion{}, false, err
	}
	u.finish()
	return fv, created, nil
}

// errCommitUnknown marks a commit whose COMMIT failed in a way that leaves
// its outcome unknown.
var errCommitUnknown = errors.New("store: commit outcome unknown")

// commitIn does Commit's work within a batch's transaction, and sets op's
// hooks for what happens after.
func (u *Upload) commitIn(ctx context.Context, tx *sql.Tx, b *batch, op *batchOp, crc uint32, sha [32]byte) (FileVersion, bool, error) {
	s := u.s
	rowed := u.rowed.Load()
	if rowed {
		var one int
		if err := tx.QueryRowContext(ctx, "SELECT 1 FROM uploads WHERE id = ?", u.id[:]).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return FileVersion{}, false, errors.New("store: upload row is gone (purged?)")
			}
			return FileVersion{}, false, wrapDB("look up upload", err)
		}
	}

	var (
		latest      int
		lsize       int64
		lcrc, lkind int64
		lsha        []byte
		ldamaged    bool
		lpath       string
		haveLatest  = true
	)
	err := tx.QueryRowContext(ctx,
		"SELECT version, size, crc, sha256, kind, damaged, path FROM files WHERE client_id = ? AND name = ? ORDER BY version DESC LIMIT 1",
		u.client[:], u.name).Scan(&latest, &lsize, &lcrc, &lsha, &lkind, &ldamaged, &lpath)
	if errors.Is(err, sql.ErrNoRows) {
		haveLatest = false
	} else if err != nil {
		return FileVersion{}, false, wrapDB("look up latest version", err)
	}

	if haveLatest && lsize == u.size && uint32(lcrc) == crc && bytes.Equal(lsha, sha[:]) && uint8(lkind) == u.kind {
		if ldamaged {
			return u.commitHeal(ctx, tx, b, op, latest, lpath)
		}
		return u.commitSame(ctx, tx, op, latest)
	}

	next := latest + 1
	rel, err := versionPath(u.client, u.name, next)
	if err != nil {
		return FileVersion{}, false, err
	}
	osRel := filepath.FromSlash(rel)
	// The file goes to its final place before the row is inserted: a
	// crash after the rename leaves an unreferenced file, which Open
	// removes; a version row never points at a missing file. The batch
	// syncs both directories before it commits. Never overwrite (see
	// existsError).
	if err := s.moveIntoPlace(u.temp, rel); err != nil {
		return FileVersion{}, false, err
	}
	undo := func() {
		if s.root.Rename(osRel, filepath.FromSlash(u.temp)) != nil {
			s.root.Remove(osRel)
			u.closeFile()
		}
	}
	op.undo = undo
	op.committed = func(ctx context.Context, db *sql.DB) (bool, error) {
		err := db.QueryRowContext(ctx, "SELECT 1 FROM files WHERE path = ?", rel).Scan(new(int))
		if errors.Is(err, sql.ErrNoRows) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("%w: %w", errCommitUnknown, err)
		}
		return true, nil
	}
	b.dirs[path.Dir(rel)] = true
	b.dirs[tmpDir] = true

	now := time.Now().UnixNano()
	fv := FileVersion{
		Name:     u.name,
		Version:  next,
		Size:     u.size,
		ModTime:  time.Unix(0, u.mtime),
		Mode:     u.mode,
		CRC:      crc,
		SHA256:   sha,
		StoredAt: time.Unix(0, now),
		Verified: true,
	}
	fv.Kind, fv.Meta = u.kind, bytes.Clone(u.meta)
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO files (client_id, name, version, size, mtime_ns, mode, crc, sha256, stored_at, path, verified, kind, meta)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)`,
		u.client[:], u.name, next, u.size, u.mtime, int64(u.mode), int64(crc), sha[:], now, rel, int64(u.kind), metaValue(u.meta)); err != nil {
		undo()
		return FileVersion{}, false, wrapDB("insert version", err)
	}
	if rowed {
		if _, err := tx.ExecContext(ctx, "DELETE FROM uploads WHERE id = ?", u.id[:]); err != nil {
			undo()
			return FileVersion{}, false, wrapDB("delete upload", err)
		}
	}
	return fv, true, nil
}

// commitSame finishes commitIn when the upload equals the latest version.
func (u *Upload) commitSame(ctx context.Context, tx *sql.Tx, op *batchOp, version int) (FileVersion, bool, error) {
	s := u.s
	fv, err := u.updateSame(ctx, tx, version, "")
	if err != nil {
		return FileVersion{}, false, err
	}
	rowed := u.rowed.Load()
	// The row is gone once the batch commits, so a failure to remove the
	// temp file leaves a stray one, which Open removes.
	op.after = func() { s.root.Remove(filepath.FromSlash(u.temp)) }
	op.committed = func(ctx context.Context, db *sql.DB) (bool, error) {
		if !rowed {
			// Nothing but the version's time and mode changed: if they are
			// the upload's, the commit's effect is there either way.
			return u.sameRecorded(ctx, db, version, false)
		}
		return u.rowGone(ctx, db)
	}
	return fv, false, nil
}

// updateSame records, within tx, that version holds the upload's content:
// its modification time, mode and metadata become the upload's, and, with
// healed set (the time as text of a number), its damaged mark is cleared.
// It also deletes the upload's row and returns the version as it now is.
func (u *Upload) updateSame(ctx context.Context, tx *sql.Tx, version int, healed string) (FileVersion, error) {
	q := "UPDATE files SET mtime_ns = ?, mode = ?, meta = ? WHERE client_id = ? AND name = ? AND version = ?"
	if healed != "" {
		q = "UPDATE files SET mtime_ns = ?, mode = ?, meta = ?, damaged = 0, checked_at = " + healed +
			" WHERE client_id = ? AND name = ? AND version = ?"
	}
	if _, err := tx.ExecContext(ctx, q, u.mtime, int64(u.mode), metaValue(u.meta), u.client[:], u.name, version); err != nil {
		return FileVersion{}, wrapDB("update version", err)
	}
	if u.rowed.Load() {
		if _, err := tx.ExecContext(ctx, "DELETE FROM uploads WHERE id = ?", u.id[:]); err != nil {
			return FileVersion{}, wrapDB("delete upload", err)
		}
	}
	fv, err := scanFile(tx.QueryRowContext(ctx,
		"SELECT "+fileColumns+" FROM files WHERE client_id = ? AND name = ? AND version = ?",
		u.client[:], u.name, version))
	if err != nil {
		return FileVersion{}, wrapDB("read version", err)
	}
	return fv, nil
}

// sameRecorded reports, for the committed probe of an upload without a
// row, whether version records the upload's time, mode and metadata (and,
// with healed, no damage): then the commit's effect is there either way.
func (u *Upload) sameRecorded(ctx context.Context, db *sql.DB, version int, healed bool) (bool, error) {
	var mt, mode int64
	var meta []byte
	var damaged bool
	err := db.QueryRowContext(ctx, "SELECT mtime_ns, mode, meta, damaged FROM files WHERE client_id = ? AND name = ? AND version = ?",
		u.client[:], u.name, version).Scan(&mt, &mode, &meta, &damaged)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("%w: %w", errCommitUnknown, err)
	}
	return err == nil && mt == u.mtime && mode == int64(u.mode) && bytes.Equal(meta, u.meta) && !(healed && damaged), nil
}

// rowGone is the committed probe of an upload with a row: the commit
// deleted it.
func (u *Upload) rowGone(ctx context.Context, db *sql.DB) (bool, error) {
	err := db.QueryRowContext(ctx, "SELECT 1 FROM uploads WHERE id = ?", u.id[:]).Scan(new(int))
	if errors.Is(err, sql.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", errCommitUnknown, err)
	}
	return false, nil
}

// commitHeal finishes commitIn when the upload equals the latest version
// and that version is marked damaged: the upload's file, whose checksums
// are the version's, replaces the damaged one (a rename over it), and the
// mark is cleared. Should the batch not commit, the version's file is
// good all the same and only the mark stays; the next send or check
// clears it.
func (u *Upload) commitHeal(ctx context.Context, tx *sql.Tx, b *batch, op *batchOp, version int, rel string) (FileVersion, bool, error) {
	s := u.s
	if err := checkInClientDir(u.client, rel); err != nil {
		return FileVersion{}, false, err
	}
	if err := s.root.Rename(filepath.FromSlash(u.temp), filepath.FromSlash(rel)); err != nil {
		return FileVersion{}, false, wrapIO("replace damaged version", err)
	}
	s.dirs.drop(path.Dir(rel)) // renamed over by path: no held handle assumed fresh
	b.dirs[path.Dir(rel)] = true
	b.dirs[tmpDir] = true
	if u.size <= syncFSMax && haveSyncFS {
		b.syncFS = true
	}
	op.undo = u.closeFile // the temp file is gone: only Discard is left
	fv, err := u.updateSame(ctx, tx, version, strconv.FormatInt(time.Now().UnixNano(), 10))
	if err != nil {
		return FileVersion{}, false, err
	}
	rowed := u.rowed.Load()
	op.committed = func(ctx context.Context, db *sql.DB) (bool, error) {
		if !rowed {
			return u.sameRecorded(ctx, db, version, true)
		}
		return u.rowGone(ctx, db)
	}
	u.healed = true
	return fv, false, nil
}

// Healed reports whether Commit replaced a damaged stored file.
func (u *Upload) Healed() bool { return u.healed }

// metaValue is what the meta column holds for a metadata record: never
// NULL.
func metaValue(meta []byte) []byte {
	if meta == nil {
		return []byte{}
	}
	return meta
}

// Discard abandons the upload: it closes and removes the temp file and
// deletes the upload row. The upload is finished even if Discard returns an
// error (for instance because ctx is done before the row is deleted); what
// is left behind is removed by the next Open or PurgeUploads.
func (u *Upload) Discard(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return ErrUploadDone
	}
	// The upload stays registered as open until its row is gone, so that
	// ResumeUpload and PurgeUploads leave it alone meanwhile.
	u.closeFile()
	u.done = true
	defer u.finish()
	s := u.s
	var errs []error
	if err := s.root.Remove(filepath.FromSlash(u.temp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, wrapIO("remove temp file", err))
	}
	if !u.rowed.Load() {
		return errors.Join(errs...)
	}
	if err := s.lockWrite(ctx); err != nil {
		errs = append(errs, err)
	} else {
		if _, err := s.db.ExecContext(ctx, "DELETE FROM uploads WHERE id = ?", u.id[:]); err != nil {
			errs = append(errs, wrapDB("delete upload", err))
		}
		s.unlockWrite()
	}
	return errors.Join(errs...)
}

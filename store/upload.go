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
	"sync"
	"time"
)

// errUploadLost is returned by an Upload whose temp file could not be put
// back after a failed Commit; only Discard is useful then.
var errUploadLost = errors.New("store: upload's temp file was lost in a failed commit; discard the upload")

// Upload is a file being received: a sparse temp file of the final size,
// written at arbitrary offsets, then committed as a new version or
// discarded. WriteAt and ReadAt may be called concurrently (at disjoint
// ranges, for writes); Commit and Discard wait for calls in progress and
// make all later calls fail with ErrUploadDone.
type Upload struct {
	s      *Store
	id     [16]byte
	client ClientID
	name   string
	size   int64
	mtime  int64 // unix nanoseconds
	mode   uint32
	temp   string // temp file, relative to the store directory

	mu   sync.RWMutex // read-locked by WriteAt/ReadAt, locked by Commit/Discard/Close
	f    *os.File     // nil once closed
	done bool
}

// NewUpload starts receiving version data for the client's file name: size
// bytes, with the client's modification time and permission bits, recorded
// in the version at Commit. It creates the temp file (sparse, already of
// the final size) and the upload row. It fails with ErrInvalidName,
// ErrUploadSize (size outside [0, MaxUploadSize]), ErrUnknownClient or
// ErrNoSpace.
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

	if err := s.lockWrite(ctx); err != nil {
		return nil, err
	}
	defer s.unlockWrite()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("store: closed")
	}

	// The temp file first, then the row: a crash in between leaves a temp
	// file without a row, which Open removes.
	f, err := s.root.OpenFile(filepath.FromSlash(u.temp), os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return nil, wrapIO("create temp file", err)
	}
	fail := func(err error) (*Upload, error) {
		f.Close()
		s.root.Remove(filepath.FromSlash(u.temp))
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		return fail(wrapIO("size temp file", err))
	}
	res, err := s.db.ExecContext(ctx, `
		INSERT INTO uploads (id, client_id, name, size, mtime_ns, mode, temp_path, created)
		SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?)`,
		u.id[:], id[:], name, size, mtimeNS, int64(mode), u.temp, time.Now().UnixNano(), id[:])
	if err != nil {
		return fail(wrapDB("insert upload", err))
	}
	if n, err := res.RowsAffected(); err != nil {
		return fail(wrapDB("insert upload", err))
	} else if n == 0 {
		return fail(fmt.Errorf("%w: %s", ErrUnknownClient, id))
	}
	u.f = f

	s.mu.Lock()
	if s.closed {
		// Close ran meanwhile: it cannot have seen this upload, so close it
		// here. Row and file stay for PurgeUploads, like other open uploads
		// at Close.
		s.mu.Unlock()
		f.Close()
		return nil, errors.New("store: closed")
	}
	s.uploads[u.id] = u
	s.mu.Unlock()
	return u, nil
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

// Commit stores the uploaded data, whose checksums the caller computed, as
// a version of the file. If the latest version has the same size, CRC and
// SHA-256, no version is added: that version's modification time and mode
// are set to the upload's and it is returned with created false. Otherwise
// the data becomes version latest+1 (verified) and created is true. Either
// way the upload is finished; after an error it is left as it was (unless
// the error is ErrUploadDone), so Commit can be retried or the upload
// discarded.
func (u *Upload) Commit(ctx context.Context, crc uint32, sha [32]byte) (fv FileVersion, created bool, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return FileVersion{}, false, ErrUploadDone
	}
	if u.f == nil {
		return FileVersion{}, false, errUploadLost
	}
	if err := u.f.Sync(); err != nil {
		return FileVersion{}, false, wrapIO("sync upload", err)
	}
	s := u.s
	if err := s.lockWrite(ctx); err != nil {
		return FileVersion{}, false, err
	}
	defer s.unlockWrite()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return FileVersion{}, false, wrapDB("begin", err)
	}
	defer tx.Rollback() // no-op after Commit

	var one int
	if err := tx.QueryRowContext(ctx, "SELECT 1 FROM uploads WHERE id = ?", u.id[:]).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return FileVersion{}, false, errors.New("store: upload row is gone (purged?)")
		}
		return FileVersion{}, false, wrapDB("look up upload", err)
	}

	var (
		latest     int
		lsize      int64
		lcrc       int64
		lsha       []byte
		haveLatest = true
	)
	err = tx.QueryRowContext(ctx,
		"SELECT version, size, crc, sha256 FROM files WHERE client_id = ? AND name = ? ORDER BY version DESC LIMIT 1",
		u.client[:], u.name).Scan(&latest, &lsize, &lcrc, &lsha)
	if errors.Is(err, sql.ErrNoRows) {
		haveLatest = false
	} else if err != nil {
		return FileVersion{}, false, wrapDB("look up latest version", err)
	}

	if haveLatest && lsize == u.size && uint32(lcrc) == crc && bytes.Equal(lsha, sha[:]) {
		return u.commitSame(ctx, tx, latest)
	}

	next := latest + 1
	rel, err := versionPath(u.client, u.name, next)
	if err != nil {
		return FileVersion{}, false, err
	}
	osRel := filepath.FromSlash(rel)
	if err := mkdirAll(s.root, path.Dir(rel)); err != nil {
		return FileVersion{}, false, err
	}
	// Never overwrite: only a crash leftover (removed at Open) or a
	// filesystem that folds case or normalises Unicode could put a file
	// here, and the latter would make two names share one file.
	if _, err := s.root.Lstat(osRel); err == nil {
		return FileVersion{}, false, fmt.Errorf("store: %s already exists; is the filesystem case-insensitive or normalising names?", rel)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return FileVersion{}, false, wrapIO("check version file", err)
	}

	// The file goes to its final place before the row is inserted: a
	// crash after the rename leaves an unreferenced file, which Open
	// removes; a version row never points at a missing file.
	if err := s.root.Rename(filepath.FromSlash(u.temp), osRel); err != nil {
		return FileVersion{}, false, wrapIO("move upload into place", err)
	}
	undo := func() {
		if s.root.Rename(osRel, filepath.FromSlash(u.temp)) != nil {
			s.root.Remove(osRel)
			u.closeFile()
		}
	}
	if err := syncDir(s.root, path.Dir(rel)); err != nil {
		undo()
		return FileVersion{}, false, err
	}
	if err := syncDir(s.root, tmpDir); err != nil {
		undo()
		return FileVersion{}, false, err
	}

	now := time.Now().UnixNano()
	fv = FileVersion{
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
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO files (client_id, name, version, size, mtime_ns, mode, crc, sha256, stored_at, path, verified)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)`,
		u.client[:], u.name, next, u.size, u.mtime, int64(u.mode), int64(crc), sha[:], now, rel); err != nil {
		undo()
		return FileVersion{}, false, wrapDB("insert version", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM uploads WHERE id = ?", u.id[:]); err != nil {
		undo()
		return FileVersion{}, false, wrapDB("delete upload", err)
	}
	if err := tx.Commit(); err != nil {
		// A failed COMMIT leaves the transaction rolled back, but check
		// before moving the file back: a version row must never point at
		// a missing file.
		qerr := s.db.QueryRowContext(context.WithoutCancel(ctx), "SELECT 1 FROM files WHERE path = ?", rel).Scan(&one)
		switch {
		case qerr == nil:
			// Committed after all.
		case errors.Is(qerr, sql.ErrNoRows):
			undo()
			return FileVersion{}, false, wrapDB("commit", err)
		default:
			// Unknown outcome. The file stays: if the row exists it is
			// needed, and if not, Open removes it as an orphan.
			u.closeFile()
			return FileVersion{}, false, fmt.Errorf("store: commit outcome unknown: %w (checking: %w)", wrapDB("commit", err), qerr)
		}
	}
	u.finish()
	return fv, true, nil
}

// commitSame finishes Commit when the upload equals the latest version.
func (u *Upload) commitSame(ctx context.Context, tx *sql.Tx, version int) (FileVersion, bool, error) {
	s := u.s
	if _, err := tx.ExecContext(ctx,
		"UPDATE files SET mtime_ns = ?, mode = ? WHERE client_id = ? AND name = ? AND version = ?",
		u.mtime, int64(u.mode), u.client[:], u.name, version); err != nil {
		return FileVersion{}, false, wrapDB("update version", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM uploads WHERE id = ?", u.id[:]); err != nil {
		return FileVersion{}, false, wrapDB("delete upload", err)
	}
	fv, err := scanFile(tx.QueryRowContext(ctx,
		"SELECT "+fileColumns+" FROM files WHERE client_id = ? AND name = ? AND version = ?",
		u.client[:], u.name, version))
	if err != nil {
		return FileVersion{}, false, wrapDB("read version", err)
	}
	if err := tx.Commit(); err != nil {
		return FileVersion{}, false, wrapDB("commit", err)
	}
	u.finish()
	// The row is gone, so a failure here leaves a stray temp file, which
	// Open removes.
	s.root.Remove(filepath.FromSlash(u.temp))
	return fv, false, nil
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
	u.finish()
	s := u.s
	var errs []error
	if err := s.root.Remove(filepath.FromSlash(u.temp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, wrapIO("remove temp file", err))
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

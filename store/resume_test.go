package store

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// resumeMtime is the modification time the resume tests upload with; its
// nanoseconds catch any rounding.
var resumeMtime = time.Unix(1_700_000_000, 123_456_789)

// newUpload starts an upload or fails the test.
func newUpload(t *testing.T, s *Store, id ClientID, name string, size int64, mtime time.Time) *Upload {
	t.Helper()
	u, err := s.NewUpload(t.Context(), id, name, size, mtime, 0o640)
	if err != nil {
		t.Fatalf("NewUpload(%q, %d): %v", name, size, err)
	}
	return u
}

// checkpoint checkpoints u with blob or fails the test. A new upload gets
// its row at its first checkpoint.
func checkpoint(t *testing.T, u *Upload, blob []byte) {
	t.Helper()
	if err := u.Checkpoint(t.Context(), blob); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
}

// park keeps u for resume, as the server does with an interrupted upload:
// a checkpoint, then Release.
func park(t *testing.T, u *Upload) {
	t.Helper()
	checkpoint(t, u, nil)
	if err := u.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// write writes p at off or fails the test.
func write(t *testing.T, u *Upload, p []byte, off int64) {
	t.Helper()
	if n, err := u.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
}

// uploadState reports whether the upload's row and temp file exist.
func uploadState(t *testing.T, s *Store, id [16]byte) (row, file bool) {
	t.Helper()
	var one int
	err := s.db.QueryRow("SELECT 1 FROM uploads WHERE id = ?", id[:]).Scan(&one)
	switch {
	case err == nil:
		row = true
	case !errors.Is(err, sql.ErrNoRows):
		t.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(s.Dir(), filepath.FromSlash(tempPath(id))))
	switch {
	case err == nil:
		file = true
	case !errors.Is(err, fs.ErrNotExist):
		t.Fatal(err)
	}
	return row, file
}

// readUpload reads n bytes at off of the upload.
func readUpload(t *testing.T, u *Upload, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if got, err := u.ReadAt(b, off); got != n || (err != nil && got < n) {
		t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, got, err)
	}
	return b
}

// TestResumeAfterRestart checkpoints part of an upload, closes the store
// as a stopping server would, reopens it, resumes the upload, finishes and
// commits it.
func TestResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openStore(t, dir)
	c := register(t, s, "laptop")
	data := randBytes(100_000)
	const half = 40_000
	u := newUpload(t, s, c.ID, "docs/report.pdf", int64(len(data)), resumeMtime)
	write(t, u, data[:half], 0)
	blob := []byte("ranges: 0-40000")
	if err := u.Checkpoint(ctx, blob); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	write(t, u, data[half:half+1000], half) // after the checkpoint: not claimed
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir)
	if got := s.Recovered(); got != (Recovery{}) {
		t.Errorf("Recovered() after restart = %+v, want zero (the upload is kept)", got)
	}
	if n, size, err := s.PartialUploads(ctx); err != nil || n != 1 || size != int64(len(data)) {
		t.Errorf("PartialUploads = %d, %d, %v; want 1, %d, nil", n, size, err, len(data))
	}
	r, gotBlob, err := s.ResumeUpload(ctx, c.ID, "docs/report.pdf", int64(len(data)), resumeMtime, nil)
	if err != nil {
		t.Fatalf("ResumeUpload: %v", err)
	}
	if got, want := r.ID(), u.ID(); got != want {
		t.Errorf("resumed ID = %x, want %x", got, want)
	}
	if !bytes.Equal(gotBlob, blob) {
		t.Errorf("resumed blob = %q, want %q", gotBlob, blob)
	}
	if got, want := r.Size(), int64(len(data)); got != want {
		t.Errorf("resumed Size() = %d, want %d", got, want)
	}
	if got, want := r.Name(), "docs/report.pdf"; got != want {
		t.Errorf("resumed Name() = %q, want %q", got, want)
	}
	if got := readUpload(t, r, 0, half); !bytes.Equal(got, data[:half]) {
		t.Error("bytes written before the checkpoint differ after resume")
	}

	// A second resume while this one is open finds nothing, and leaves it.
	if _, _, err := s.ResumeUpload(ctx, c.ID, "docs/report.pdf", int64(len(data)), resumeMtime, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("ResumeUpload of an open upload: error = %v, want ErrNotFound", err)
	}

	write(t, r, data[half:], half)
	if err := r.Checkpoint(ctx, []byte("all")); err != nil {
		t.Fatalf("Checkpoint of resumed upload: %v", err)
	}
	crc, sha := sums(data)
	fv, created, err := r.Commit(ctx, crc, sha)
	if err != nil || !created {
		t.Fatalf("Commit of resumed upload = %v, %v; want created", created, err)
	}
	want := FileVersion{Name: "docs/report.pdf", Version: 1, Size: int64(len(data)), ModTime: resumeMtime, Mode: 0o640, CRC: crc, SHA256: sha, StoredAt: fv.StoredAt, Verified: true}
	checkFV(t, "resumed version", fv, want)
	if got := content(t, s, c.ID, fv); !bytes.Equal(got, data) {
		t.Error("content of the resumed and committed version differs")
	}
	if row, file := uploadState(t, s, u.ID()); row || file {
		t.Errorf("after Commit: upload row %v, temp file %v; want neither", row, file)
	}
	if n, size, err := s.PartialUploads(ctx); err != nil || n != 0 || size != 0 {
		t.Errorf("PartialUploads after Commit = %d, %d, %v; want 0, 0, nil", n, size, err)
	}
	checkTempEmpty(t, s)
}

// TestResumeReleased resumes within one process, and checks the blob of an
// upload never checkpointed, or checkpointed with nil or a maximal blob.
func TestResumeReleased(t *testing.T) {
	big := bytes.Repeat([]byte{0xa5}, MaxRangesLen)
	tests := []struct {
		name       string
		checkpoint bool
		blob       []byte
		want       []byte
	}{
		{"nil blob", true, nil, []byte{}},
		{"small blob", true, []byte{1, 2, 3}, []byte{1, 2, 3}},
		{"largest blob", true, big, big},
	}
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpload(t, s, c.ID, tt.name, 10, resumeMtime)
			if tt.checkpoint {
				if err := u.Checkpoint(ctx, tt.blob); err != nil {
					t.Fatalf("Checkpoint: %v", err)
				}
			}
			if err := u.Release(); err != nil {
				t.Fatalf("Release: %v", err)
			}
			r, got, err := s.ResumeUpload(ctx, c.ID, tt.name, 10, resumeMtime, nil)
			if err != nil {
				t.Fatalf("ResumeUpload: %v", err)
			}
			if r.ID() != u.ID() {
				t.Errorf("resumed ID = %x, want %x", r.ID(), u.ID())
			}
			if (got == nil) != (tt.want == nil) || !bytes.Equal(got, tt.want) {
				t.Errorf("blob = %v (nil %v), want nil %v, %d bytes", len(got), got == nil, tt.want == nil, len(tt.want))
			}
			if err := r.Discard(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
	// Never checkpointed: no row, and nothing known to be on disk, so
	// Release leaves nothing to resume.
	u := newUpload(t, s, c.ID, "never checkpointed", 10, resumeMtime)
	write(t, u, []byte("0123456789"), 0)
	if err := u.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if row, file := uploadState(t, s, u.ID()); row || file {
		t.Errorf("released upload never checkpointed: row %v, temp file %v; want neither", row, file)
	}
	if _, _, err := s.ResumeUpload(ctx, c.ID, "never checkpointed", 10, resumeMtime, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("ResumeUpload of an upload never checkpointed: error = %v, want ErrNotFound", err)
	}
	checkTempEmpty(t, s)
}

func TestCheckpointTooLarge(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	u := newUpload(t, s, c.ID, "f", 10, resumeMtime)
	if err := u.Checkpoint(ctx, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if err := u.Checkpoint(ctx, make([]byte, MaxRangesLen+1)); !errors.Is(err, ErrRangesTooLarge) {
		t.Errorf("Checkpoint(%d bytes) error = %v, want ErrRangesTooLarge", MaxRangesLen+1, err)
	}
	u.Release()
	if _, got, err := s.ResumeUpload(ctx, c.ID, "f", 10, resumeMtime, nil); err != nil || string(got) != "ok" {
		t.Errorf("ResumeUpload after a refused checkpoint = %q, %v; want the previous blob", got, err)
	}
}

// TestResumeStale checks that uploads of an earlier state of the file are
// discarded, and that a file of another name or client is left alone.
func TestResumeStale(t *testing.T) {
	tests := []struct {
		name  string
		size  int64
		mtime time.Time
	}{
		{"other size", 11, resumeMtime},
		{"other mtime", 10, resumeMtime.Add(time.Nanosecond)},
		{"other size and mtime", 0, resumeMtime.Add(-time.Hour)},
	}
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	other := register(t, s, "desktop")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stale := newUpload(t, s, c.ID, "f", 10, resumeMtime)
			write(t, stale, []byte("0123456789"), 0)
			if err := stale.Checkpoint(ctx, []byte("x")); err != nil {
				t.Fatal(err)
			}
			stale.Release()
			// Same name, other client; other name, same client.
			bystanders := []*Upload{
				newUpload(t, s, other.ID, "f", 10, resumeMtime),
				newUpload(t, s, c.ID, "g", 10, resumeMtime),
			}
			for _, b := range bystanders {
				park(t, b)
			}

			_, _, err := s.ResumeUpload(ctx, c.ID, "f", tt.size, tt.mtime, nil)
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("ResumeUpload with %s: error = %v, want ErrNotFound", tt.name, err)
			}
			if row, file := uploadState(t, s, stale.ID()); row || file {
				t.Errorf("stale upload: row %v, temp file %v; want neither", row, file)
			}
			for i, b := range bystanders {
				if row, file := uploadState(t, s, b.ID()); !row || !file {
					t.Errorf("bystander %d: row %v, temp file %v; want both", i, row, file)
				}
			}
			if _, err := s.PurgeUploads(ctx, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		})
	}
	checkTempEmpty(t, s)
}

// TestResumeInUse checks that uploads that skip rejects, or that are open in
// the store, are neither returned nor discarded.
func TestResumeInUse(t *testing.T) {
	tests := []struct {
		name    string
		release bool // release the upload, so only skip protects it
		skip    bool // skip rejects it
		size    int64
		wantErr error // from ResumeUpload
		wantRow bool  // the upload's row and file afterwards
	}{
		{"skipped candidate", true, true, 10, ErrNotFound, true},
		{"skipped stale", true, true, 11, ErrNotFound, true},
		{"open candidate", false, false, 10, ErrNotFound, true},
		{"open stale", false, false, 11, ErrNotFound, true},
		{"free candidate", true, false, 10, nil, true},
		{"free stale", true, false, 11, ErrNotFound, false},
	}
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpload(t, s, c.ID, "f", 10, resumeMtime)
			checkpoint(t, u, nil) // an upload under way long enough to have a row
			if tt.release {
				u.Release()
			}
			var asked [][16]byte
			skip := func(id [16]byte) bool {
				asked = append(asked, id)
				return tt.skip && id == u.ID()
			}
			r, _, err := s.ResumeUpload(ctx, c.ID, "f", tt.size, resumeMtime, skip)
			if !errors.Is(err, tt.wantErr) || (err != nil && tt.wantErr == nil) {
				t.Errorf("ResumeUpload error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && r.ID() != u.ID() {
				t.Errorf("ResumeUpload returned %x, want %x", r.ID(), u.ID())
			}
			if row, file := uploadState(t, s, u.ID()); row != tt.wantRow || file != tt.wantRow {
				t.Errorf("row %v, temp file %v; want %v", row, file, tt.wantRow)
			}
			if tt.release && len(asked) != 1 {
				t.Errorf("skip called for %x, want once for the released upload", asked)
			}
			// Clean up for the next case.
			if err == nil {
				u = r
			} else if tt.release {
				u = nil
			}
			if u != nil {
				u.Discard(ctx)
			}
			if _, err := s.PurgeUploads(ctx, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			checkTempEmpty(t, s)
		})
	}
}

// TestResumeDamaged checks that a candidate whose temp file is missing or
// has the wrong size is discarded, without falling back to older ones.
func TestResumeDamaged(t *testing.T) {
	tests := []struct {
		name   string
		damage func(path string) error
	}{
		{"missing", os.Remove},
		{"short", func(p string) error { return os.Truncate(p, 5) }},
		{"long", func(p string) error { return os.Truncate(p, 11) }},
		{"directory", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Mkdir(p, 0o700)
		}},
	}
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			older := newUpload(t, s, c.ID, "f", 10, resumeMtime)
			park(t, older)
			time.Sleep(time.Millisecond) // distinct updated times
			u := newUpload(t, s, c.ID, "f", 10, resumeMtime)
			park(t, u)
			if err := tt.damage(filepath.Join(s.Dir(), filepath.FromSlash(tempPath(u.ID())))); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.ResumeUpload(ctx, c.ID, "f", 10, resumeMtime, nil); !errors.Is(err, ErrNotFound) {
				t.Errorf("ResumeUpload of a %s temp file: error = %v, want ErrNotFound", tt.name, err)
			}
			if row, file := uploadState(t, s, u.ID()); row || file {
				t.Errorf("damaged upload: row %v, temp file %v; want neither", row, file)
			}
			if row, file := uploadState(t, s, older.ID()); !row || !file {
				t.Errorf("older upload: row %v, temp file %v; want both", row, file)
			}
			// Next time the older one is the candidate.
			r, _, err := s.ResumeUpload(ctx, c.ID, "f", 10, resumeMtime, nil)
			if err != nil || r.ID() != older.ID() {
				t.Fatalf("second ResumeUpload = %v; want the older upload", err)
			}
			r.Discard(ctx)
			checkTempEmpty(t, s)
		})
	}
}

// TestResumeMostRecent checks that of several candidates the one updated
// last is resumed, whatever the creation order.
func TestResumeMostRecent(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	var ups []*Upload
	for range 3 {
		u := newUpload(t, s, c.ID, "f", 10, resumeMtime)
		checkpoint(t, u, nil)
		ups = append(ups, u)
		time.Sleep(time.Millisecond)
	}
	if err := ups[1].Checkpoint(ctx, []byte("middle")); err != nil {
		t.Fatal(err)
	}
	for _, u := range ups {
		u.Release()
	}
	wantOrder := []int{1, 2, 0}
	var got []int
	var open []*Upload
	for range wantOrder {
		r, _, err := s.ResumeUpload(ctx, c.ID, "f", 10, resumeMtime, nil)
		if err != nil {
			t.Fatalf("ResumeUpload: %v", err)
		}
		open = append(open, r) // stays open, so the next call picks another
		for i, u := range ups {
			if u.ID() == r.ID() {
				got = append(got, i)
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(wantOrder) {
		t.Errorf("resumed uploads %v, want %v", got, wantOrder)
	}
	for _, r := range open {
		r.Discard(ctx)
	}
}

func TestResumeErrors(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	tests := []struct {
		name  string
		id    ClientID
		file  string
		size  int64
		mtime time.Time
		want  error
	}{
		{"invalid name", c.ID, "../x", 1, resumeMtime, ErrInvalidName},
		{"negative size", c.ID, "x", -1, resumeMtime, ErrUploadSize},
		{"huge size", c.ID, "x", MaxUploadSize + 1, resumeMtime, ErrUploadSize},
		{"unknown client", ClientID{1}, "x", 1, resumeMtime, ErrNotFound},
		{"nothing to resume", c.ID, "x", 1, resumeMtime, ErrNotFound},
		{"unstorable mtime", c.ID, "x", 1, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), ErrNotFound},
	}
	for _, tt := range tests {
		u, blob, err := s.ResumeUpload(t.Context(), tt.id, tt.file, tt.size, tt.mtime, nil)
		if !errors.Is(err, tt.want) || u != nil || blob != nil {
			t.Errorf("%s: ResumeUpload = %v, %v, %v; want nil, nil, %v", tt.name, u, blob, err, tt.want)
		}
	}
}

// TestUploadReleased checks Release and what follows it, and Checkpoint
// after Commit and Discard.
func TestUploadReleased(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	crc, sha := sums([]byte("xy"))

	released := newUpload(t, s, c.ID, "released", 2, resumeMtime)
	write(t, released, []byte("xy"), 0)
	park(t, released)
	if row, file := uploadState(t, s, released.ID()); !row || !file {
		t.Errorf("after Release: row %v, temp file %v; want both kept", row, file)
	}
	discarded := newUpload(t, s, c.ID, "discarded", 2, resumeMtime)
	if err := discarded.Discard(ctx); err != nil {
		t.Fatal(err)
	}
	committed := newUpload(t, s, c.ID, "committed", 2, resumeMtime)
	write(t, committed, []byte("xy"), 0)
	if _, _, err := committed.Commit(ctx, crc, sha); err != nil {
		t.Fatal(err)
	}

	for _, up := range []struct {
		desc string
		u    *Upload
	}{{"released", released}, {"discarded", discarded}, {"committed", committed}} {
		calls := []struct {
			call string
			err  error
		}{
			{"WriteAt", func() error { _, err := up.u.WriteAt([]byte("x"), 0); return err }()},
			{"ReadAt", func() error { _, err := up.u.ReadAt(make([]byte, 1), 0); return err }()},
			{"Checkpoint", up.u.Checkpoint(ctx, []byte("r"))},
			{"Release", up.u.Release()},
			{"Commit", func() error { _, _, err := up.u.Commit(ctx, crc, sha); return err }()},
			{"Discard", up.u.Discard(ctx)},
		}
		for _, call := range calls {
			if !errors.Is(call.err, ErrUploadDone) {
				t.Errorf("%s upload: %s error = %v, want ErrUploadDone", up.desc, call.call, call.err)
			}
		}
	}
	// Neither the failed Commit nor the failed Discard touched it.
	if row, file := uploadState(t, s, released.ID()); !row || !file {
		t.Errorf("released upload after further calls: row %v, temp file %v; want both kept", row, file)
	}
	if _, err := s.Latest(ctx, c.ID, "released"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Latest(released) error = %v, want ErrNotFound", err)
	}
	r, _, err := s.ResumeUpload(ctx, c.ID, "released", 2, resumeMtime, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := readUpload(t, r, 0, 2); string(got) != "xy" {
		t.Errorf("released upload resumed with %q, want xy", got)
	}
	if _, _, err := r.Commit(ctx, crc, sha); err != nil {
		t.Errorf("Commit of resumed upload: %v", err)
	}
}

// TestUploadCloseKeeps checks that Store.Close acts like Release.
func TestUploadCloseKeeps(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	u := newUpload(t, s, c.ID, "f", 3, resumeMtime)
	s.Close()
	if err := u.Checkpoint(t.Context(), nil); !errors.Is(err, ErrUploadDone) {
		t.Errorf("Checkpoint after Store.Close: error = %v, want ErrUploadDone", err)
	}
	if err := u.Release(); !errors.Is(err, ErrUploadDone) {
		t.Errorf("Release after Store.Close: error = %v, want ErrUploadDone", err)
	}
}

// TestPurgeUploadsByUpdated checks that PurgeUploads goes by last
// activity: an upload created long ago but checkpointed recently stays.
func TestPurgeUploadsByUpdated(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	idle := newUpload(t, s, c.ID, "idle", 10, resumeMtime)
	busy := newUpload(t, s, c.ID, "busy", 10, resumeMtime)
	resumed := newUpload(t, s, c.ID, "resumed", 10, resumeMtime)
	for _, u := range []*Upload{idle, busy, resumed} {
		checkpoint(t, u, nil)
	}
	longAgo := time.Now().Add(-48 * time.Hour).UnixNano()
	if _, err := s.db.Exec("UPDATE uploads SET created = ?, updated = ?", longAgo, longAgo); err != nil {
		t.Fatal(err)
	}
	if err := busy.Checkpoint(ctx, []byte("r")); err != nil {
		t.Fatal(err)
	}
	for _, u := range []*Upload{idle, busy, resumed} {
		u.Release()
	}
	r, _, err := s.ResumeUpload(ctx, c.ID, "resumed", 10, resumeMtime, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Release()

	n, err := s.PurgeUploads(ctx, time.Now().Add(-time.Hour))
	if err != nil || n != 1 {
		t.Errorf("PurgeUploads = %d, %v; want 1, nil", n, err)
	}
	tests := []struct {
		name string
		u    *Upload
		want bool
	}{
		{"idle", idle, false},
		{"busy", busy, true},
		{"resumed", resumed, true},
	}
	for _, tt := range tests {
		if row, file := uploadState(t, s, tt.u.ID()); row != tt.want || file != tt.want {
			t.Errorf("%s upload: row %v, temp file %v; want %v", tt.name, row, file, tt.want)
		}
	}
	if got, size, err := s.PartialUploads(ctx); err != nil || got != 2 || size != 20 {
		t.Errorf("PartialUploads = %d, %d, %v; want 2, 20, nil", got, size, err)
	}
}

func TestPartialUploads(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	sizes := []int64{0, 1, 1000, 1 << 40}
	var total int64
	for i, size := range sizes {
		u := newUpload(t, s, c.ID, fmt.Sprint("f", i), size, resumeMtime)
		if i%2 == 0 {
			park(t, u) // parked and open uploads both count, open ones from the first byte
		}
		total += size
		n, got, err := s.PartialUploads(ctx)
		if err != nil || n != i+1 || got != total {
			t.Errorf("PartialUploads = %d, %d, %v; want %d, %d, nil", n, got, err, i+1, total)
		}
	}
}

// schemaV1 is the schema of version 1, as released.
const schemaV1 = `
CREATE TABLE clients (
	id        BLOB    PRIMARY KEY CHECK (length(id) = 16),
	name      TEXT    NOT NULL UNIQUE,
	pubkey    BLOB    NOT NULL,
	created   INTEGER NOT NULL, -- unix nanoseconds
	last_seen INTEGER NOT NULL  -- unix nanoseconds
);
CREATE TABLE files (
	client_id BLOB    NOT NULL REFERENCES clients(id),
	name      TEXT    NOT NULL,
	version   INTEGER NOT NULL CHECK (version >= 1),
	size      INTEGER NOT NULL CHECK (size >= 0),
	mtime_ns  INTEGER NOT NULL, -- client's mtime, unix nanoseconds
	mode      INTEGER NOT NULL,
	crc       INTEGER NOT NULL, -- POSIX cksum
	sha256    BLOB    NOT NULL CHECK (length(sha256) = 32),
	stored_at INTEGER NOT NULL, -- unix nanoseconds
	path      TEXT    NOT NULL UNIQUE, -- relative to the store directory, '/'-separated
	verified  INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (client_id, name, version)
);
CREATE TABLE uploads (
	id        BLOB    PRIMARY KEY CHECK (length(id) = 16),
	client_id BLOB    NOT NULL REFERENCES clients(id),
	name      TEXT    NOT NULL,
	size      INTEGER NOT NULL CHECK (size >= 0),
	mtime_ns  INTEGER NOT NULL,
	mode      INTEGER NOT NULL,
	temp_path TEXT    NOT NULL UNIQUE, -- relative to the store directory
	created   INTEGER NOT NULL, -- unix nanoseconds
	ranges    BLOB              -- reserved for resume: received byte ranges
);
PRAGMA user_version = 1;
`

// TestMigrateV1 builds a version 1 store by hand, with a stored version
// and an upload in progress, and opens it.
func TestMigrateV1(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	for _, d := range []string{"tmp", "clients"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	u := url.URL{Path: filepath.ToSlash(filepath.Join(dir, dbName))}
	db, err := sql.Open("sqlite3", "file:"+u.EscapedPath()+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(schemaV1); err != nil {
		t.Fatal(err)
	}
	// writeVersion puts a version's file where versionPath says.
	writeVersion := func(client ClientID, name string, v int, data []byte) string {
		rel, err := versionPath(client, name, v)
		if err != nil {
			t.Fatal(err)
		}
		full := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return rel
	}
	type stmt struct {
		sql  string
		args []any
	}
	client := ClientID{0xc1}
	data := []byte("version one")
	crc, sha := sums(data)
	rel := writeVersion(client, "a/b", 1, data)
	// A second client with two versions of a file, and a third with none,
	// for the usage table's backfill (schema version 4).
	client2 := ClientID{0xc2}
	var more []stmt
	for v, b := range [][]byte{[]byte("two, first"), []byte("two, second!")} {
		rel2 := writeVersion(client2, "x", v+1, b)
		c2, s2 := sums(b)
		more = append(more, stmt{"INSERT INTO files VALUES (?, 'x', ?, ?, 5, 420, ?, ?, 6, ?, 1)", []any{client2[:], v + 1, len(b), int64(c2), s2[:], rel2}})
	}
	upID := [16]byte{15: 7}
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(tempPath(upID))), []byte("partial..."), 0o600); err != nil {
		t.Fatal(err)
	}
	const created = 1_600_000_000_000_000_000
	for _, q := range append([]stmt{
		{"INSERT INTO clients VALUES (?, 'old', x'00', 1, 2)", []any{client[:]}},
		{"INSERT INTO clients VALUES (?, 'two', x'01', 1, 2)", []any{client2[:]}},
		{"INSERT INTO clients VALUES (?, 'none', x'02', 1, 2)", []any{[]byte{0xc3, 15: 0}}},
		{"INSERT INTO files VALUES (?, 'a/b', 1, ?, 5, 420, ?, ?, 6, ?, 1)", []any{client[:], len(data), int64(crc), sha[:], rel}},
		{"INSERT INTO uploads VALUES (?, ?, 'c', 10, ?, 420, ?, ?, NULL)", []any{upID[:], client[:], resumeMtime.UnixNano(), tempPath(upID), created}},
	}, more...) {
		if _, err := db.Exec(q.sql, q.args...); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openStore(t, dir)
	if got := s.Recovered(); got != (Recovery{}) {
		t.Errorf("Recovered() = %+v, want zero", got)
	}
	var version int
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != schemaVersion {
		t.Errorf("user_version = %d, %v; want %d", version, err, schemaVersion)
	}
	var updated int64
	if err := s.db.QueryRow("SELECT updated FROM uploads WHERE id = ?", upID[:]).Scan(&updated); err != nil || updated != created {
		t.Errorf("migrated upload's updated = %d, %v; want created, %d", updated, err, int64(created))
	}
	var tableSQL string
	if err := s.db.QueryRow("SELECT sql FROM sqlite_schema WHERE name = 'uploads'").Scan(&tableSQL); err != nil ||
		!strings.Contains(tableSQL, "updated INTEGER NOT NULL DEFAULT 0") {
		t.Errorf("uploads table after migration = %q, %v; want an updated column", tableSQL, err)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Error(err)
	}
	for _, u := range []struct {
		id    ClientID
		bytes int64
		n     int
	}{{client, int64(len(data)), 1}, {client2, 10 + 12, 2}, {ClientID{0xc3}, 0, 0}} {
		if bytes, n, err := s.Usage(ctx, u.id); err != nil || bytes != u.bytes || n != u.n {
			t.Errorf("Usage(%x) after migration = %d bytes, %d versions, %v; want %d, %d", u.id[:1], bytes, n, err, u.bytes, u.n)
		}
	}
	checkUsage(t, s)
	fv, err := s.Latest(ctx, client, "a/b")
	if err != nil {
		t.Fatalf("Latest after migration: %v", err)
	}
	if got := content(t, s, client, fv); !bytes.Equal(got, data) {
		t.Errorf("content after migration = %q, want %q", got, data)
	}
	r, blob, err := s.ResumeUpload(ctx, client, "c", 10, resumeMtime, nil)
	if err != nil || blob != nil || r.ID() != upID {
		t.Fatalf("ResumeUpload after migration = %v, %v; want the v1 upload, nil blob", blob, err)
	}
	if got := readUpload(t, r, 0, 10); string(got) != "partial..." {
		t.Errorf("resumed v1 upload reads %q", got)
	}
	s.Close()

	// Opening again is a no-op.
	s = openStore(t, dir)
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != schemaVersion {
		t.Errorf("user_version after reopening = %d, %v; want %d", version, err, schemaVersion)
	}
}

// TestMigratedSchemaMatchesNew checks that every migration leaves the
// same tables as a new database would have: both come from migrations, so
// this guards against later edits that create a new schema directly.
func TestMigratedSchemaMatchesNew(t *testing.T) {
	s := openStore(t, t.TempDir())
	var cols []string
	rows, err := s.db.Query("SELECT name, type, \"notnull\", coalesce(dflt_value, '') FROM pragma_table_info('uploads')")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name, typ, dflt string
		var notNull bool
		if err := rows.Scan(&name, &typ, &notNull, &dflt); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, fmt.Sprintf("%s %s %v %s", name, typ, notNull, dflt))
	}
	rows.Close()
	want := []string{
		"id BLOB false ", "client_id BLOB true ", "name TEXT true ", "size INTEGER true ",
		"mtime_ns INTEGER true ", "mode INTEGER true ", "temp_path TEXT true ", "created INTEGER true ",
		"ranges BLOB false ", "updated INTEGER true 0",
	}
	if fmt.Sprint(cols) != fmt.Sprint(want) {
		t.Errorf("uploads columns =\n%q\nwant\n%q", cols, want)
	}
}

// TestCheckpointConcurrent runs Checkpoint while chunks are written and
// read, stopping halfway, then checks, after a restart, that every chunk
// the last stored blob claims reads back as written. Run it with -race.
func TestCheckpointConcurrent(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openStore(t, dir)
	c := register(t, s, "laptop")
	const chunk, chunks = 4096, 64
	data := randBytes(chunk * chunks)
	u := newUpload(t, s, c.ID, "f", int64(len(data)), resumeMtime)

	var (
		mu       sync.Mutex
		written  = make([]byte, chunks) // 1 for each chunk whose WriteAt returned
		nWritten int
		lastBlob []byte // last blob a Checkpoint stored
	)
	snapshot := func() []byte {
		mu.Lock()
		defer mu.Unlock()
		return bytes.Clone(written)
	}
	stop := make(chan struct{})
	var ckpts sync.WaitGroup
	var ckMu sync.Mutex // orders the blob taken and the stored one for lastBlob
	for range 2 {
		ckpts.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ckMu.Lock()
				b := snapshot()
				err := u.Checkpoint(ctx, b)
				if err == nil {
					lastBlob = b
				}
				ckMu.Unlock()
				if err != nil {
					t.Errorf("Checkpoint: %v", err)
					return
				}
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 8 {
		writers.Go(func() {
			for i := w; i < chunks; i += 8 {
				off := i * chunk
				if _, err := u.WriteAt(data[off:off+chunk], int64(off)); err != nil {
					t.Errorf("WriteAt: %v", err)
					return
				}
				if _, err := u.ReadAt(make([]byte, chunk), int64(off)); err != nil {
					t.Errorf("ReadAt: %v", err)
					return
				}
				mu.Lock()
				written[i] = 1
				nWritten++
				if nWritten == chunks/2 {
					// Writes go on while the last checkpoints run and after.
					close(stop)
				}
				mu.Unlock()
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	writers.Wait()
	ckpts.Wait()
	if t.Failed() {
		return
	}
	if err := u.Release(); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openStore(t, dir)
	r, blob, err := s.ResumeUpload(ctx, c.ID, "f", int64(len(data)), resumeMtime, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(blob, lastBlob) {
		t.Errorf("resumed blob %v, want the last one stored, %v", blob, lastBlob)
	}
	claimed := 0
	for i, w := range blob {
		if w == 1 {
			claimed++
			if got := readUpload(t, r, int64(i*chunk), chunk); !bytes.Equal(got, data[i*chunk:(i+1)*chunk]) {
				t.Errorf("chunk %d claimed by the checkpoint differs", i)
			}
		}
	}
	t.Logf("last checkpoint claimed %d of %d chunks", claimed, chunks)
	r.Discard(ctx)
}

// resumeBlob is what the crash test's child checkpoints: the length n of
// the prefix written and the SHA-256 of that prefix.
func resumeBlob(n int, sum [32]byte) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, uint64(n)), sum[:]...)
}

// checkCheckpoints verifies every checkpointed upload's blob against its
// temp file (see resumeBlob).
func checkCheckpoints(t *testing.T, s *Store) (checked int) {
	t.Helper()
	rows, err := s.db.Query("SELECT temp_path, size, ranges FROM uploads WHERE ranges IS NOT NULL")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			rel   string
			size  int64
			blob  []byte
			sumOK bool
		)
		if err := rows.Scan(&rel, &size, &blob); err != nil {
			t.Fatal(err)
		}
		if len(blob) != 40 {
			t.Errorf("%s: blob of %d bytes", rel, len(blob))
			continue
		}
		n := binary.LittleEndian.Uint64(blob)
		b, err := os.ReadFile(filepath.Join(s.Dir(), filepath.FromSlash(rel)))
		if err == nil && int64(len(b)) == size && n <= uint64(size) {
			sumOK = [32]byte(blob[8:]) == sha256.Sum256(b[:n])
		}
		if !sumOK {
			t.Errorf("%s: checkpoint claims %d bytes that are not in the temp file (%d bytes, %v)", rel, n, len(b), err)
		}
		checked++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return checked
}

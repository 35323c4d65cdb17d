package store

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
)

// openStore opens a store in dir and closes it at the end of the test
// unless the test closed it itself.
func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(t.Context(), dir)
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if !closed {
			s.Close()
		}
	})
	return s
}

func newKey(t *testing.T) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func register(t *testing.T, s *Store, name string) Client {
	t.Helper()
	c, created, err := s.RegisterClient(t.Context(), name, newKey(t))
	if err != nil || !created {
		t.Fatalf("RegisterClient(%q) = %v, %v; want created client", name, created, err)
	}
	return c
}

// sums returns the checksums the server would compute. The store treats the
// CRC as opaque, so the IEEE CRC stands in for the POSIX cksum here.
func sums(data []byte) (uint32, [32]byte) {
	return crc32.ChecksumIEEE(data), sha256.Sum256(data)
}

// put uploads data as name in chunks written concurrently and commits it.
func put(t *testing.T, s *Store, id ClientID, name string, data []byte, mtime time.Time, mode uint32) (FileVersion, bool) {
	t.Helper()
	ctx := t.Context()
	u, err := s.NewUpload(ctx, id, name, int64(len(data)), mtime, mode)
	if err != nil {
		t.Fatalf("NewUpload(%q): %v", name, err)
	}
	const chunk = 1000
	var wg sync.WaitGroup
	errs := make(chan error, len(data)/chunk+1)
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		wg.Go(func() {
			if n, err := u.WriteAt(data[off:end], int64(off)); err != nil || n != end-off {
				errs <- fmt.Errorf("WriteAt(%d bytes at %d) = %d, %v", end-off, off, n, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	crc, sha := sums(data)
	fv, created, err := u.Commit(ctx, crc, sha)
	if err != nil {
		t.Fatalf("Commit(%q): %v", name, err)
	}
	return fv, created
}

// content reads a stored version back.
func content(t *testing.T, s *Store, id ClientID, fv FileVersion) []byte {
	t.Helper()
	f, err := s.OpenVersion(t.Context(), id, fv)
	if err != nil {
		t.Fatalf("OpenVersion(%q, %d): %v", fv.Name, fv.Version, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestOpenSettings(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "store dir?x=1#frag%20")
	s := openStore(t, dir)
	ctx := t.Context()
	if got := s.Dir(); got != dir {
		t.Errorf("Dir() = %q, want %q", got, dir)
	}
	tests := []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "2"}, // FULL
		{"foreign_keys", "1"},
		{"busy_timeout", "5000"},
		{"user_version", fmt.Sprint(schemaVersion)},
	}
	for _, tt := range tests {
		var got string
		if err := s.db.QueryRowContext(ctx, "PRAGMA "+tt.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", tt.pragma, err)
		}
		if got != tt.want {
			t.Errorf("PRAGMA %s = %q, want %q", tt.pragma, got, tt.want)
		}
	}
	for _, p := range []string{"", "clients", "tmp"} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != 0o700 {
			t.Errorf("mode of %q = %v, want 0700", p, got)
		}
	}
	st, err := os.Stat(filepath.Join(dir, dbName))
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("mode of database = %v, want 0600", got)
	}
	var seq int
	var schemaName, file string
	if err := s.db.QueryRowContext(ctx, "PRAGMA database_list").Scan(&seq, &schemaName, &file); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, dbName); file != want {
		t.Errorf("database file = %q, want %q", file, want)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Errorf("IntegrityCheck: %v", err)
	}
	if got := s.Recovered(); got != (Recovery{}) {
		t.Errorf("Recovered() on a new store = %+v, want zero", got)
	}
}

func TestOpenTwice(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if s2, err := Open(t.Context(), dir); err == nil {
		s2.Close()
		t.Fatal("second Open of an open store directory succeeded, want error")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err == nil {
		t.Error("second Close succeeded, want error")
	}
	openStore(t, dir) // the lock is released by Close
}

func TestOpenNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if _, err := s.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", schemaVersion+1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s2, err := Open(t.Context(), dir); err == nil {
		s2.Close()
		t.Fatal("Open of a newer schema succeeded, want error")
	}
}

func TestRegisterClient(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	key1, key2 := newKey(t), newKey(t)
	first, created, err := s.RegisterClient(ctx, "laptop", key1)
	if err != nil || !created {
		t.Fatalf("RegisterClient(laptop) = %v, %v; want created", created, err)
	}
	tests := []struct {
		desc        string
		name        string
		key         []byte
		wantErr     error
		wantCreated bool
		wantID      *ClientID
	}{
		{"idempotent", "laptop", key1, nil, false, &first.ID},
		{"name taken", "laptop", key2, ErrNameTaken, false, nil},
		{"other name same key", "desktop", key1, nil, true, nil},
		{"second new client", "server", key2, nil, true, nil},
		{"empty name", "", key1, ErrInvalidName, false, nil},
		{"slash", "a/b", key1, ErrInvalidName, false, nil},
		{"too long", strings.Repeat("x", 65), key1, ErrInvalidName, false, nil},
		{"empty key", "phone", nil, ErrInvalidKey, false, nil},
		{"garbage key", "phone", []byte("not a key"), ErrInvalidKey, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, created, err := s.RegisterClient(ctx, tt.name, tt.key)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("RegisterClient(%q) error = %v, want %v", tt.name, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if created != tt.wantCreated {
				t.Errorf("created = %v, want %v", created, tt.wantCreated)
			}
			if tt.wantID != nil && c.ID != *tt.wantID {
				t.Errorf("ID = %v, want %v", c.ID, *tt.wantID)
			}
			if c.ID == (ClientID{}) || c.Name != tt.name || !bytes.Equal(c.PublicKey, tt.key) {
				t.Errorf("client = %+v, want non-zero ID, name %q and the key", c, tt.name)
			}
			got, err := s.Client(ctx, c.ID)
			if err != nil {
				t.Fatalf("Client(%v): %v", c.ID, err)
			}
			if got.ID != c.ID || got.Name != c.Name || !bytes.Equal(got.PublicKey, c.PublicKey) || !got.Created.Equal(c.Created) {
				t.Errorf("Client(%v) = %+v, want %+v", c.ID, got, c)
			}
		})
	}
	if _, err := s.Client(ctx, ClientID{0xff}); !errors.Is(err, ErrUnknownClient) {
		t.Errorf("Client(unknown) error = %v, want ErrUnknownClient", err)
	}
}

func TestRegisterClientConcurrent(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	key := newKey(t)
	const n = 10
	type result struct {
		c       Client
		created bool
		err     error
	}
	sameKey := make([]result, n)
	otherKeys := make([]result, n)
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = newKey(t)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, created, err := s.RegisterClient(ctx, "shared", key)
			sameKey[i] = result{c, created, err}
		})
		wg.Go(func() {
			c, created, err := s.RegisterClient(ctx, "contested", keys[i])
			otherKeys[i] = result{c, created, err}
		})
	}
	wg.Wait()

	createdCount := 0
	for i, r := range sameKey {
		if r.err != nil {
			t.Fatalf("registration %d of shared: %v", i, r.err)
		}
		if r.created {
			createdCount++
		}
		if r.c.ID != sameKey[0].c.ID {
			t.Errorf("registration %d got ID %v, want %v", i, r.c.ID, sameKey[0].c.ID)
		}
	}
	if createdCount != 1 {
		t.Errorf("same key: %d registrations created the client, want 1", createdCount)
	}

	wins, taken := 0, 0
	for i, r := range otherKeys {
		switch {
		case r.err == nil && r.created:
			wins++
		case errors.Is(r.err, ErrNameTaken):
			taken++
		default:
			t.Errorf("registration %d of contested = %v, %v; want created or ErrNameTaken", i, r.created, r.err)
		}
	}
	if wins != 1 || taken != n-1 {
		t.Errorf("different keys: %d created, %d ErrNameTaken; want 1 and %d", wins, taken, n-1)
	}
}

func TestUploadRoundTrip(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	mtime1 := time.Unix(1700000000, 123456789)
	data1 := randBytes(10_500)

	fv1, created := put(t, s, c.ID, "docs/report.txt", data1, mtime1, 0o644)
	crc1, sha1 := sums(data1)
	want1 := FileVersion{Name: "docs/report.txt", Version: 1, Size: int64(len(data1)), ModTime: mtime1, Mode: 0o644, CRC: crc1, SHA256: sha1, Verified: true}
	if !created {
		t.Errorf("first Commit created = false, want true")
	}
	checkFV(t, "Commit", fv1, want1)
	if fv1.StoredAt.IsZero() {
		t.Errorf("StoredAt is zero")
	}

	latest, err := s.Latest(ctx, c.ID, "docs/report.txt")
	if err != nil {
		t.Fatalf("Latest: %v", err)
	}
	checkFV(t, "Latest", latest, want1)
	if !latest.StoredAt.Equal(fv1.StoredAt) {
		t.Errorf("Latest StoredAt = %v, want %v", latest.StoredAt, fv1.StoredAt)
	}
	if got := content(t, s, c.ID, latest); !bytes.Equal(got, data1) {
		t.Errorf("content of version 1 differs (%d bytes, want %d)", len(got), len(data1))
	}

	data2 := randBytes(3)
	mtime2 := mtime1.Add(time.Hour + 1)
	fv2, created := put(t, s, c.ID, "docs/report.txt", data2, mtime2, 0o600)
	if !created || fv2.Version != 2 {
		t.Errorf("second Commit = version %d, created %v; want 2, true", fv2.Version, created)
	}
	crc2, sha2 := sums(data2)
	want2 := FileVersion{Name: "docs/report.txt", Version: 2, Size: 3, ModTime: mtime2, Mode: 0o600, CRC: crc2, SHA256: sha2, Verified: true}

	vs, err := s.Versions(ctx, c.ID, "docs/report.txt")
	if err != nil {
		t.Fatalf("Versions: %v", err)
	}
	if len(vs) != 2 {
		t.Fatalf("Versions returned %d versions, want 2", len(vs))
	}
	checkFV(t, "Versions[0]", vs[0], want1)
	checkFV(t, "Versions[1]", vs[1], want2)

	v1, err := s.Version(ctx, c.ID, "docs/report.txt", 1)
	if err != nil {
		t.Fatalf("Version(1): %v", err)
	}
	checkFV(t, "Version(1)", v1, want1)
	if got := content(t, s, c.ID, v1); !bytes.Equal(got, data1) {
		t.Errorf("content of version 1 changed after version 2")
	}
	if got := content(t, s, c.ID, fv2); !bytes.Equal(got, data2) {
		t.Errorf("content of version 2 = %x, want %x", got, data2)
	}

	list, err := s.List(ctx, c.ID, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 1 || list[0].Versions != 2 {
		t.Fatalf("List = %+v, want one file with 2 versions", list)
	}
	checkFV(t, "List", list[0].Latest, want2)

	// Not found cases.
	notFound := []struct {
		desc string
		err  error
	}{
		{"Latest of unknown name", func() error { _, err := s.Latest(ctx, c.ID, "nope"); return err }()},
		{"Version 3", func() error { _, err := s.Version(ctx, c.ID, "docs/report.txt", 3); return err }()},
		{"Version 0", func() error { _, err := s.Version(ctx, c.ID, "docs/report.txt", 0); return err }()},
		{"OpenVersion 3", func() error {
			_, err := s.OpenVersion(ctx, c.ID, FileVersion{Name: "docs/report.txt", Version: 3})
			return err
		}()},
		{"Latest of other client", func() error { _, err := s.Latest(ctx, ClientID{1}, "docs/report.txt"); return err }()},
	}
	for _, tt := range notFound {
		if !errors.Is(tt.err, ErrNotFound) {
			t.Errorf("%s: error = %v, want ErrNotFound", tt.desc, tt.err)
		}
	}
	if vs, err := s.Versions(ctx, c.ID, "nope"); err != nil || len(vs) != 0 {
		t.Errorf("Versions(nope) = %v, %v; want empty, nil", vs, err)
	}
	if _, err := s.Latest(ctx, c.ID, "../etc/passwd"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Latest(../etc/passwd) error = %v, want ErrInvalidName", err)
	}

	// Files on disk: 0600 in 0700 directories, no temp files left.
	p, _ := versionPath(c.ID, "docs/report.txt", 2)
	st, err := os.Stat(filepath.Join(s.Dir(), filepath.FromSlash(p)))
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("stored file mode = %v, want 0600", got)
	}
	st, err = os.Stat(filepath.Join(s.Dir(), filepath.FromSlash(filepath.Dir(p))))
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o700 {
		t.Errorf("stored directory mode = %v, want 0700", got)
	}
	checkTempEmpty(t, s)
}

func checkFV(t *testing.T, what string, got, want FileVersion) {
	t.Helper()
	if got.Name != want.Name || got.Version != want.Version || got.Size != want.Size ||
		!got.ModTime.Equal(want.ModTime) || got.Mode != want.Mode || got.CRC != want.CRC ||
		got.SHA256 != want.SHA256 || got.Verified != want.Verified {
		t.Errorf("%s = %+v\nwant %+v", what, got, want)
	}
	if got.ModTime.UnixNano() != want.ModTime.UnixNano() {
		t.Errorf("%s: ModTime %d ns, want %d ns", what, got.ModTime.UnixNano(), want.ModTime.UnixNano())
	}
}

func checkTempEmpty(t *testing.T, s *Store) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("tmp holds %d entries, want none", len(entries))
	}
	var n int
	if err := s.db.QueryRow("SELECT count(*) FROM uploads").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("uploads table has %d rows, want 0", n)
	}
}

func TestEmptyAndDeepFiles(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	// 40 components whose escaped form is 255 bytes each: the on-disk
	// path is about 10 KiB, longer than PATH_MAX.
	deep := strings.TrimSuffix(strings.Repeat(strings.Repeat("%", 85)+"/", 40), "/")
	if p, err := versionPath(c.ID, deep, 1); err != nil || len(p) <= 4096 {
		t.Fatalf("versionPath(deep) = %d bytes, %v; want a path longer than PATH_MAX", len(p), err)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"a;1", []byte("semicolon")},
		{"100%", []byte("percent")},
		{"x/" + strings.Repeat("é", 127), []byte("long last component, hashed")},
		{deep, []byte("deep")},
	}
	for _, tt := range tests {
		fv, created := put(t, s, c.ID, tt.name, tt.data, time.Unix(0, 1), 0o644)
		if !created || fv.Version != 1 || fv.Size != int64(len(tt.data)) {
			t.Errorf("Commit(%.30q) = version %d size %d created %v, want 1, %d, true", tt.name, fv.Version, fv.Size, created, len(tt.data))
		}
		if got := content(t, s, c.ID, fv); !bytes.Equal(got, tt.data) {
			t.Errorf("content of %.30q = %q, want %q", tt.name, got, tt.data)
		}
	}
	// "a" must not collide with "a;1".
	fv, _ := put(t, s, c.ID, "a", []byte("plain"), time.Unix(0, 1), 0o644)
	if got := content(t, s, c.ID, fv); string(got) != "plain" {
		t.Errorf("content of a = %q, want plain", got)
	}
	if got, err := s.Latest(t.Context(), c.ID, "a;1"); err != nil || got.Size != int64(len("semicolon")) {
		t.Errorf("Latest(a;1) = %+v, %v; want the semicolon file", got, err)
	}
}

func TestDedupe(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	data := randBytes(5000)
	first, _ := put(t, s, c.ID, "f", data, time.Unix(100, 1), 0o644)
	newTime := time.Unix(200, 999999999)
	again, created := put(t, s, c.ID, "f", data, newTime, 0o755)
	if created {
		t.Errorf("Commit of identical content created = true, want false")
	}
	want := first
	want.ModTime, want.Mode = newTime, 0o755
	checkFV(t, "dedupe Commit", again, want)
	latest, err := s.Latest(ctx, c.ID, "f")
	if err != nil {
		t.Fatal(err)
	}
	checkFV(t, "Latest after dedupe", latest, want)
	if vs, _ := s.Versions(ctx, c.ID, "f"); len(vs) != 1 {
		t.Errorf("%d versions after dedupe, want 1", len(vs))
	}
	checkTempEmpty(t, s)

	// Same size, different content: a new version.
	changed := bytes.Clone(data)
	changed[0] ^= 1
	fv, created := put(t, s, c.ID, "f", changed, newTime, 0o755)
	if !created || fv.Version != 2 {
		t.Errorf("Commit of changed content = version %d created %v, want 2, true", fv.Version, created)
	}
	// Identical to version 1 but not to the latest: a new version too.
	fv, created = put(t, s, c.ID, "f", data, newTime, 0o755)
	if !created || fv.Version != 3 {
		t.Errorf("Commit of old content = version %d created %v, want 3, true", fv.Version, created)
	}
}

func TestClientIsolation(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	a, b := register(t, s, "a"), register(t, s, "b")
	put(t, s, a.ID, "same/name", []byte("from a"), time.Unix(1, 0), 0o644)
	fvB, createdB := put(t, s, b.ID, "same/name", []byte("from a"), time.Unix(1, 0), 0o644)
	if !createdB || fvB.Version != 1 {
		t.Errorf("b's commit of the same content = version %d created %v, want 1, true (no cross-client dedupe)", fvB.Version, createdB)
	}
	put(t, s, b.ID, "same/name", []byte("from b"), time.Unix(2, 0), 0o644)
	put(t, s, b.ID, "only/b", []byte("b"), time.Unix(2, 0), 0o644)

	tests := []struct {
		id           ClientID
		wantFiles    int
		wantVersions int
		wantContent  string
	}{
		{a.ID, 1, 1, "from a"},
		{b.ID, 2, 2, "from b"},
	}
	for _, tt := range tests {
		list, err := s.List(ctx, tt.id, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != tt.wantFiles {
			t.Errorf("client %v: List has %d files, want %d", tt.id, len(list), tt.wantFiles)
		}
		fv, err := s.Latest(ctx, tt.id, "same/name")
		if err != nil {
			t.Fatal(err)
		}
		if fv.Version != tt.wantVersions {
			t.Errorf("client %v: latest version %d, want %d", tt.id, fv.Version, tt.wantVersions)
		}
		if got := string(content(t, s, tt.id, fv)); got != tt.wantContent {
			t.Errorf("client %v: content %q, want %q", tt.id, got, tt.wantContent)
		}
	}
	if _, err := s.Latest(ctx, a.ID, "only/b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a sees b's file: error = %v, want ErrNotFound", err)
	}
	if _, err := s.OpenVersion(ctx, a.ID, FileVersion{Name: "only/b", Version: 1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("a opens b's file: error = %v, want ErrNotFound", err)
	}
}

func TestListPrefix(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	for _, n := range []string{"a/b", "a/b/c", "a/b/d/e", "a/bc", "a/b0", "a/b.", "b", "a", "z/a/b"} {
		put(t, s, c.ID, n, []byte(n), time.Unix(1, 0), 0o644)
	}
	put(t, s, c.ID, "a/b/c", []byte("v2"), time.Unix(1, 0), 0o644)
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a", "a/b", "a/b.", "a/b/c", "a/b/d/e", "a/b0", "a/bc", "b", "z/a/b"}},
		{"a/b", []string{"a/b", "a/b/c", "a/b/d/e"}},
		{"a/b/", []string{"a/b", "a/b/c", "a/b/d/e"}},
		{"a", []string{"a", "a/b", "a/b.", "a/b/c", "a/b/d/e", "a/b0", "a/bc"}},
		{"a/b/c", []string{"a/b/c"}},
		{"a/bc", []string{"a/bc"}},
		{"z", []string{"z/a/b"}},
		{"nothing", nil},
	}
	for _, tt := range tests {
		list, err := s.List(t.Context(), c.ID, tt.prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", tt.prefix, err)
		}
		var got []string
		for _, fs := range list {
			got = append(got, fs.Latest.Name)
			wantVersions := 1
			if fs.Latest.Name == "a/b/c" {
				wantVersions = 2
			}
			if fs.Versions != wantVersions || fs.Latest.Version != wantVersions {
				t.Errorf("List(%q): %q has Versions %d, latest %d; want %d", tt.prefix, fs.Latest.Name, fs.Versions, fs.Latest.Version, wantVersions)
			}
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("List(%q) = %q, want %q", tt.prefix, got, tt.want)
		}
	}
	for _, bad := range []string{"/a", "a//b", "..", "a/../b"} {
		if _, err := s.List(t.Context(), c.ID, bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("List(%q) error = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestNewUploadErrors(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	tests := []struct {
		desc  string
		id    ClientID
		name  string
		size  int64
		mtime time.Time
		want  error
	}{
		{"unknown client", ClientID{0xee}, "f", 1, time.Unix(1, 0), ErrUnknownClient},
		{"invalid name", c.ID, "a/../b", 1, time.Unix(1, 0), ErrInvalidName},
		{"negative size", c.ID, "f", -1, time.Unix(1, 0), ErrUploadSize},
		{"too big", c.ID, "f", MaxUploadSize + 1, time.Unix(1, 0), ErrUploadSize},
		{"zero time", c.ID, "f", 1, time.Time{}, nil},
	}
	for _, tt := range tests {
		u, err := s.NewUpload(t.Context(), tt.id, tt.name, tt.size, tt.mtime, 0o644)
		if err == nil {
			u.Discard(t.Context())
			t.Errorf("%s: NewUpload succeeded, want error", tt.desc)
			continue
		}
		if tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: NewUpload error = %v, want %v", tt.desc, err, tt.want)
		}
	}
	checkTempEmpty(t, s)
}

func TestWriteAtRange(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	u, err := s.NewUpload(t.Context(), c.ID, "f", 10, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Discard(t.Context())
	tests := []struct {
		off  int64
		n    int
		want error
	}{
		{0, 10, nil},
		{9, 1, nil},
		{10, 0, nil},
		{0, 0, nil},
		{-1, 1, ErrUploadSize},
		{0, 11, ErrUploadSize},
		{9, 2, ErrUploadSize},
		{10, 1, ErrUploadSize},
		{11, 0, ErrUploadSize},
		{1 << 62, 1, ErrUploadSize},
		{-1 << 63, 0, ErrUploadSize},
	}
	for _, tt := range tests {
		n, err := u.WriteAt(make([]byte, tt.n), tt.off)
		if !errors.Is(err, tt.want) {
			t.Errorf("WriteAt(%d bytes at %d) error = %v, want %v", tt.n, tt.off, err, tt.want)
		}
		if err == nil && n != tt.n {
			t.Errorf("WriteAt(%d bytes at %d) = %d, want %d", tt.n, tt.off, n, tt.n)
		}
	}
	buf := make([]byte, 20)
	if n, err := u.ReadAt(buf, 0); n != 10 || err != io.EOF {
		t.Errorf("ReadAt past the end = %d, %v; want 10, EOF", n, err)
	}
}

func TestUploadFinished(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	crc, sha := sums([]byte("xy"))

	u, err := s.NewUpload(ctx, c.ID, "discarded", 2, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.WriteAt([]byte("xy"), 0); err != nil {
		t.Fatal(err)
	}
	temp := filepath.Join(s.Dir(), filepath.FromSlash(tempPath(u.ID())))
	if _, err := os.Stat(temp); err != nil {
		t.Fatalf("temp file missing before Discard: %v", err)
	}
	if err := u.Discard(ctx); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	if _, err := os.Stat(temp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file after Discard: Stat error = %v, want not exist", err)
	}
	checkTempEmpty(t, s)
	if _, err := s.Latest(ctx, c.ID, "discarded"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Latest of discarded upload: error = %v, want ErrNotFound", err)
	}

	committed, err := s.NewUpload(ctx, c.ID, "committed", 2, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	committed.WriteAt([]byte("xy"), 0)
	if _, _, err := committed.Commit(ctx, crc, sha); err != nil {
		t.Fatal(err)
	}

	for _, up := range []struct {
		desc string
		u    *Upload
	}{{"discarded", u}, {"committed", committed}} {
		calls := []struct {
			call string
			err  error
		}{
			{"WriteAt", func() error { _, err := up.u.WriteAt([]byte("x"), 0); return err }()},
			{"ReadAt", func() error { _, err := up.u.ReadAt(make([]byte, 1), 0); return err }()},
			{"Commit", func() error { _, _, err := up.u.Commit(ctx, crc, sha); return err }()},
			{"Discard", up.u.Discard(ctx)},
		}
		for _, call := range calls {
			if !errors.Is(call.err, ErrUploadDone) {
				t.Errorf("%s upload: %s error = %v, want ErrUploadDone", up.desc, call.call, call.err)
			}
		}
	}
	if fv, err := s.Latest(ctx, c.ID, "committed"); err != nil || fv.Version != 1 {
		t.Errorf("Latest(committed) = %+v, %v; want version 1", fv, err)
	}
}

func TestConcurrentUploads(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	const clients, files, versions = 4, 5, 3
	ids := make([]ClientID, clients)
	for i := range ids {
		ids[i] = register(t, s, fmt.Sprintf("client-%d", i)).ID
	}
	type key struct {
		client  int
		name    string
		version int
	}
	var mu sync.Mutex
	want := map[key][]byte{}
	var wg sync.WaitGroup
	for ci := range clients {
		for fi := range files {
			wg.Go(func() {
				name := fmt.Sprintf("dir%d/file%d", fi%2, fi)
				for range versions {
					data := randBytes(2000 + fi*100)
					u, err := s.NewUpload(ctx, ids[ci], name, int64(len(data)), time.Now(), 0o644)
					if err != nil {
						t.Error(err)
						return
					}
					var w sync.WaitGroup
					for off := 0; off < len(data); off += 512 {
						w.Go(func() {
							end := min(off+512, len(data))
							if _, err := u.WriteAt(data[off:end], int64(off)); err != nil {
								t.Error(err)
							}
						})
					}
					w.Wait()
					crc, sha := sums(data)
					fv, _, err := u.Commit(ctx, crc, sha)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					want[key{ci, name, fv.Version}] = data
					mu.Unlock()
				}
			})
		}
	}
	// A few concurrent readers while uploads run.
	for ci := range clients {
		wg.Go(func() {
			for range 20 {
				if _, err := s.List(ctx, ids[ci], ""); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if got, wantN := len(want), clients*files*versions; got != wantN {
		t.Fatalf("%d versions stored, want %d", got, wantN)
	}
	for k, data := range want {
		fv, err := s.Version(ctx, ids[k.client], k.name, k.version)
		if err != nil {
			t.Fatalf("Version(%v): %v", k, err)
		}
		if got := content(t, s, ids[k.client], fv); !bytes.Equal(got, data) {
			t.Errorf("content of %v differs", k)
		}
	}
	checkTempEmpty(t, s)
}

func TestCrashRecovery(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openStore(t, dir)
	c := register(t, s, "laptop")
	keep, _ := put(t, s, c.ID, "keep/me", []byte("precious"), time.Unix(5, 5), 0o644)

	// An upload in progress whose temp file then vanishes, and one that
	// stays intact.
	lost, err := s.NewUpload(ctx, c.ID, "lost", 4, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := s.NewUpload(ctx, c.ID, "pending", 4, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []*Upload{lost, pending} {
		if err := u.Checkpoint(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	// One never checkpointed: Close removes its temp file.
	fresh, err := s.NewUpload(ctx, c.ID, "fresh", 4, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, filepath.FromSlash(tempPath(lost.ID())))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(tempPath(fresh.ID())))); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file of an upload never checkpointed, after Close: %v; want it removed", err)
	}
	// A temp file without a row (a crash while an upload never
	// checkpointed was open, or after a commit).
	stray := filepath.Join(dir, "tmp", "0123456789abcdef0123456789abcdef.part")
	if err := os.WriteFile(stray, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A renamed version file without a row (crash between rename and
	// insert), in a directory of its own and next to a kept file.
	orphans := []string{}
	for _, n := range []string{"new/dir/file", "keep/other", "keep/me"} {
		v := 1
		if n == "keep/me" {
			v = 2
		}
		p, err := versionPath(c.ID, n, v)
		if err != nil {
			t.Fatal(err)
		}
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("orphan"), 0o600); err != nil {
			t.Fatal(err)
		}
		orphans = append(orphans, full)
	}

	s = openStore(t, dir)
	want := Recovery{TempFiles: 1, UploadRows: 1, OrphanFiles: 3}
	if got := s.Recovered(); got != want {
		t.Errorf("Recovered() = %+v, want %+v", got, want)
	}
	for _, p := range append(orphans, stray) {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived recovery (Stat error %v)", p, err)
		}
	}
	newDir := filepath.Join(dir, "clients", c.ID.String(), "new")
	if _, err := os.Stat(newDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty directory %s survived recovery", newDir)
	}
	var rows int
	if err := s.db.QueryRow("SELECT count(*) FROM uploads").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Errorf("%d upload rows after recovery, want 1 (the pending upload)", rows)
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(tempPath(pending.ID())))); err != nil {
		t.Errorf("pending upload's temp file: %v", err)
	}
	list, err := s.List(ctx, c.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("List after recovery = %+v, want only keep/me", list)
	}
	checkFV(t, "keep/me after recovery", list[0].Latest, keep)
	if got := content(t, s, c.ID, list[0].Latest); string(got) != "precious" {
		t.Errorf("keep/me content = %q, want precious", got)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Errorf("IntegrityCheck: %v", err)
	}

	// Leftover uploads go with PurgeUploads.
	n, err := s.PurgeUploads(ctx, time.Now())
	if err != nil || n != 1 {
		t.Errorf("PurgeUploads = %d, %v; want 1, nil", n, err)
	}
	checkTempEmpty(t, s)
}

func TestPurgeUploadsSkipsOpen(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	u, err := s.NewUpload(ctx, c.ID, "f", 1, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeUploads(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("PurgeUploads with an open upload = %d, %v; want 0, nil", n, err)
	}
	u.WriteAt([]byte("x"), 0)
	crc, sha := sums([]byte("x"))
	if _, _, err := u.Commit(ctx, crc, sha); err != nil {
		t.Errorf("Commit after PurgeUploads: %v", err)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openStore(t, dir)
	c := register(t, s, "laptop")
	data := randBytes(777)
	fv, _ := put(t, s, c.ID, "a/b", data, time.Unix(1234, 5678), 0o640)
	s.Close()

	s = openStore(t, dir)
	if got := s.Recovered(); got != (Recovery{}) {
		t.Errorf("Recovered() after clean close = %+v, want zero", got)
	}
	got, err := s.Client(ctx, c.ID)
	if err != nil || got.Name != "laptop" || !got.Created.Equal(c.Created) {
		t.Errorf("Client after reopen = %+v, %v; want %+v", got, err, c)
	}
	c2, created, err := s.RegisterClient(ctx, "laptop", c.PublicKey)
	if err != nil || created || c2.ID != c.ID {
		t.Errorf("re-register after reopen = %v, %v, %v; want same ID, not created", c2.ID, created, err)
	}
	latest, err := s.Latest(ctx, c.ID, "a/b")
	if err != nil {
		t.Fatal(err)
	}
	checkFV(t, "Latest after reopen", latest, fv)
	if !bytes.Equal(content(t, s, c.ID, latest), data) {
		t.Error("content differs after reopen")
	}
	fv2, created := put(t, s, c.ID, "a/b", []byte("new"), time.Unix(1, 0), 0o640)
	if !created || fv2.Version != 2 {
		t.Errorf("commit after reopen = version %d created %v, want 2, true", fv2.Version, created)
	}
}

func TestOpenVersionDamaged(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	fv, _ := put(t, s, c.ID, "f", []byte("hello"), time.Unix(1, 0), 0o644)
	p, _ := versionPath(c.ID, "f", 1)
	full := filepath.Join(s.Dir(), filepath.FromSlash(p))
	if err := os.Truncate(full, 2); err != nil {
		t.Fatal(err)
	}
	if f, err := s.OpenVersion(t.Context(), c.ID, fv); err == nil {
		f.Close()
		t.Error("OpenVersion of a truncated file succeeded, want error")
	}
	if err := os.Remove(full); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenVersion(t.Context(), c.ID, fv); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenVersion of a missing file: error = %v, want fs.ErrNotExist", err)
	}
}

func TestCommitRefusesOverwrite(t *testing.T) {
	tests := []struct {
		name   string
		cached bool // the directory is already open in the store (another file went there first)
		slow   bool // as on a file system without RENAME_NOREPLACE: by path, through os.Root
		put    func(full string) error
	}{
		{"file", false, false, func(p string) error { return os.WriteFile(p, []byte("other"), 0o600) }},
		{"file, directory open", true, false, func(p string) error { return os.WriteFile(p, []byte("other"), 0o600) }},
		{"dangling symlink, directory open", true, false, func(p string) error { return os.Symlink("nowhere", p) }},
		{"directory, directory open", true, false, func(p string) error { return os.Mkdir(p, 0o700) }},
		{"file, by path", true, true, func(p string) error { return os.WriteFile(p, []byte("other"), 0o600) }},
		{"dangling symlink, by path", false, true, func(p string) error { return os.Symlink("nowhere", p) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			s.noRenameNoReplace = tt.slow
			c := register(t, s, "laptop")
			if tt.cached {
				put(t, s, c.ID, "d/first", []byte("1"), time.Unix(1, 0), 0o644)
			}
			// Something already sits where version 1 would go (as on a
			// case-insensitive filesystem): Commit must fail and keep the
			// upload.
			p, _ := versionPath(c.ID, "d/f", 1)
			full := filepath.Join(s.Dir(), filepath.FromSlash(p))
			os.MkdirAll(filepath.Dir(full), 0o700)
			if err := tt.put(full); err != nil {
				t.Fatal(err)
			}
			before, err := os.Lstat(full)
			if err != nil {
				t.Fatal(err)
			}
			u, err := s.NewUpload(t.Context(), c.ID, "d/f", 1, time.Unix(1, 0), 0o644)
			if err != nil {
				t.Fatal(err)
			}
			u.WriteAt([]byte("x"), 0)
			crc, sha := sums([]byte("x"))
			if _, _, err := u.Commit(t.Context(), crc, sha); err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Fatalf("Commit over an existing %s: error = %v, want already exists", tt.name, err)
			}
			after, err := os.Lstat(full)
			if err != nil || !os.SameFile(before, after) || after.Mode() != before.Mode() {
				t.Errorf("what was there changed: %v, %v", after, err)
			}
			if err := u.Discard(t.Context()); err != nil {
				t.Errorf("Discard after failed Commit: %v", err)
			}
		})
	}
}

// TestCommitIntoRemovedDir checks that a directory the store holds open
// and that was removed meanwhile (by hand, the store being idle) is made
// again, and the file stored where its row says.
func TestCommitIntoRemovedDir(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	put(t, s, c.ID, "d/first", []byte("1"), time.Unix(1, 0), 0o644)
	p, _ := versionPath(c.ID, "d/e/f", 1)
	dir := path.Dir(p)
	if _, err := s.dirs.open(dir); err != nil { // open, and empty
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(s.Dir(), filepath.FromSlash(dir))); err != nil {
		t.Fatal(err)
	}
	data := []byte("into a directory made again")
	fv, _ := put(t, s, c.ID, "d/e/f", data, time.Unix(2, 0), 0o644)
	if got, err := os.ReadFile(filepath.Join(s.Dir(), filepath.FromSlash(p))); err != nil || !bytes.Equal(got, data) {
		t.Errorf("version file: %q, %v; want %q", got, err, data)
	}
	f, err := s.OpenVersion(t.Context(), c.ID, fv)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// TestCommitByPath: where renameat2 with RENAME_NOREPLACE is missing, a
// commit moves the file through os.Root, directories made as needed.
func TestCommitByPath(t *testing.T) {
	s := openStore(t, t.TempDir())
	s.noRenameNoReplace = true
	c := register(t, s, "laptop")
	for i, name := range []string{"a/b/c", "a/b/d", "e"} {
		data := []byte(fmt.Sprint("data ", i))
		fv, _ := put(t, s, c.ID, name, data, time.Unix(int64(i), 0), 0o644)
		p, _ := versionPath(c.ID, name, fv.Version)
		if got, err := os.ReadFile(filepath.Join(s.Dir(), filepath.FromSlash(p))); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %q, %v; want %q", name, got, err, data)
		}
	}
	if len(s.dirs.m) != 0 {
		t.Errorf("%d directories held open by the path way, want none", len(s.dirs.m))
	}
	checkTempEmpty(t, s)
}

func TestDirCacheBound(t *testing.T) {
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	c := newDirCache(root, 2)
	defer c.closeAll()
	var files []*os.File
	for _, d := range []string{"a/b", "c", "a/b", "d/e/f"} {
		f, err := c.open(d)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(d))); err != nil || !st.IsDir() {
			t.Errorf("%s: %v, %v; want a directory made", d, st, err)
		}
	}
	if files[0] != files[2] {
		t.Errorf("a/b opened twice, want the held handle again")
	}
	// c was used least recently: closed, and a/b, d/e/f kept.
	if _, ok := c.m["c"]; ok || len(c.m) != 2 || c.order.Len() != 2 {
		t.Errorf("cache holds %d (%d in order), c kept %v; want a/b and d/e/f", len(c.m), c.order.Len(), ok)
	}
	if _, err := files[1].Stat(); err == nil {
		t.Errorf("evicted handle still open")
	}
}

func TestCommitCancelled(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	u, err := s.NewUpload(t.Context(), c.ID, "f", 1, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	u.WriteAt([]byte("x"), 0)
	crc, sha := sums([]byte("x"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := u.Commit(ctx, crc, sha); err == nil {
		t.Fatal("Commit with a cancelled context succeeded, want error")
	}
	// The upload is intact and can be committed later.
	fv, created, err := u.Commit(t.Context(), crc, sha)
	if err != nil || !created || fv.Version != 1 {
		t.Fatalf("Commit after cancelled Commit = %+v, %v, %v; want version 1", fv, created, err)
	}
	if got := content(t, s, c.ID, fv); string(got) != "x" {
		t.Errorf("content = %q, want x", got)
	}
}

// TestLookupsCancelled: the lookups that run without their caller's
// cancellation (point) still fail at once for a context that has ended.
func TestLookupsCancelled(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	fv, _ := put(t, s, c.ID, "f", []byte("x"), time.Unix(1, 0), 0o644)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"Latest", func() error { _, err := s.Latest(ctx, c.ID, "f"); return err }},
		{"Version", func() error { _, err := s.Version(ctx, c.ID, "f", 1); return err }},
		{"Versions", func() error { _, err := s.Versions(ctx, c.ID, "f"); return err }},
		{"OpenVersion", func() error {
			f, err := s.OpenVersion(ctx, c.ID, fv)
			if err == nil {
				f.Close()
			}
			return err
		}},
		{"Client", func() error { _, err := s.Client(ctx, c.ID); return err }},
		{"ResumeUpload", func() error { _, _, err := s.ResumeUpload(ctx, c.ID, "g", 1, time.Unix(1, 0), nil); return err }},
	} {
		if err := tt.call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with an ended context: %v, want context.Canceled", tt.name, err)
		}
	}
}

func TestNoSpaceMapping(t *testing.T) {
	tests := []struct {
		desc string
		err  error
		want bool
	}{
		{"ENOSPC", &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, true},
		{"EDQUOT", &os.PathError{Op: "write", Path: "/x", Err: syscall.EDQUOT}, true},
		{"bare ENOSPC", syscall.ENOSPC, true},
		{"wrapped ENOSPC", fmt.Errorf("ctx: %w", syscall.ENOSPC), true},
		{"sqlite full", sqlite3.Error{Code: sqlite3.ErrFull}, true},
		{"sqlite I/O with ENOSPC", sqlite3.Error{Code: sqlite3.ErrIoErr, SystemErrno: syscall.ENOSPC}, true},
		{"EIO", &os.PathError{Op: "write", Path: "/x", Err: syscall.EIO}, false},
		{"sqlite busy", sqlite3.Error{Code: sqlite3.ErrBusy}, false},
	}
	for _, tt := range tests {
		for _, wrap := range []func(string, error) error{wrapIO, wrapDB} {
			got := wrap("write upload", tt.err)
			if errors.Is(got, ErrNoSpace) != tt.want {
				t.Errorf("%s: errors.Is(%v, ErrNoSpace) = %v, want %v", tt.desc, got, !tt.want, tt.want)
			}
			if !errors.Is(got, tt.err) && !errors.As(got, new(sqlite3.Error)) {
				t.Errorf("%s: %v does not wrap the original error", tt.desc, got)
			}
			if !strings.HasPrefix(got.Error(), "store: ") {
				t.Errorf("%s: error %q lacks the store: prefix", tt.desc, got)
			}
		}
	}
	if err := wrapIO("x", &os.PathError{Err: syscall.ENOSPC}); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("wrapIO(ENOSPC) = %v, does not wrap syscall.ENOSPC", err)
	}
}

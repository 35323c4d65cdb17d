package store

import (
	"fmt"
	"maps"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	a, b := register(t, s, "a"), register(t, s, "b")
	put(t, s, a.ID, "x", randBytes(3000), time.Unix(1, 0), 0o644)
	put(t, s, a.ID, "x", randBytes(2000), time.Unix(2, 0), 0o644) // a second version
	put(t, s, a.ID, "dir/y", randBytes(500), time.Unix(1, 0), 0o644)
	put(t, s, a.ID, "empty", nil, time.Unix(1, 0), 0o644)
	bx := randBytes(7)
	put(t, s, b.ID, "x", bx, time.Unix(1, 0), 0o644)
	put(t, s, b.ID, "x", bx, time.Unix(3, 0), 0o644) // the same again: no new version
	// An upload in progress is not stored yet.
	u, err := s.NewUpload(ctx, a.ID, "pending", 1<<20, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Discard(ctx)

	tests := []struct {
		name      string
		id        ClientID
		wantBytes int64
		wantFiles int
	}{
		{"every version counts", a.ID, 5500, 4},
		{"other client", b.ID, 7, 1},
		{"unknown client", ClientID{1, 2, 3}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bytes, files, err := s.Usage(ctx, tt.id)
			if err != nil || bytes != tt.wantBytes || files != tt.wantFiles {
				t.Errorf("Usage = %d bytes, %d files, %v; want %d, %d, nil", bytes, files, err, tt.wantBytes, tt.wantFiles)
			}
		})
	}
	checkUsage(t, s)
}

// checkUsage checks the usage table against the sums of the files table.
func checkUsage(t *testing.T, s *Store) {
	t.Helper()
	read := func(q string) map[string]string {
		rows, err := s.db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var id []byte
			var bytes, n int64
			if err := rows.Scan(&id, &bytes, &n); err != nil {
				t.Fatal(err)
			}
			if n != 0 || bytes != 0 { // a client whose versions all went counts as none
				m[fmt.Sprintf("%x", id)] = fmt.Sprintf("%d bytes in %d versions", bytes, n)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	got := read("SELECT client_id, bytes, versions FROM usage")
	want := read("SELECT client_id, sum(size), count(*) FROM files GROUP BY client_id")
	if !maps.Equal(got, want) {
		t.Errorf("usage table %v, files sum to %v", got, want)
	}
}

// TestUsageTriggers changes the files table in ways the store does not
// (yet): the usage table follows every one of them.
func TestUsageTriggers(t *testing.T) {
	s := openStore(t, t.TempDir())
	a, b := register(t, s, "a"), register(t, s, "b")
	put(t, s, a.ID, "x", randBytes(300), time.Unix(1, 0), 0o644)
	put(t, s, a.ID, "y", randBytes(20), time.Unix(1, 0), 0o644)
	put(t, s, b.ID, "x", randBytes(7), time.Unix(1, 0), 0o644)
	for _, tt := range []struct {
		name string
		sql  string
		args []any
	}{
		{"a version resized", "UPDATE files SET size = size + 5 WHERE client_id = ? AND name = 'x'", []any{a.ID[:]}},
		{"a version moved to another client", "UPDATE files SET client_id = ? WHERE client_id = ? AND name = 'y'", []any{b.ID[:], a.ID[:]}},
		{"mtime changed (commitSame)", "UPDATE files SET mtime_ns = 9 WHERE client_id = ?", []any{b.ID[:]}},
		{"a version deleted", "DELETE FROM files WHERE client_id = ? AND name = 'x'", []any{b.ID[:]}},
		{"every version of a client deleted", "DELETE FROM files WHERE client_id = ?", []any{a.ID[:]}},
		// Its usage row (0, 0) must not keep the client from going.
		{"a client without versions deleted", "DELETE FROM clients WHERE id = ?", []any{a.ID[:]}},
	} {
		if _, err := s.db.Exec(tt.sql, tt.args...); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		t.Run(tt.name, func(t *testing.T) { checkUsage(t, s) })
	}
}

func TestPending(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	a, b := register(t, s, "a"), register(t, s, "b")
	put(t, s, a.ID, "stored", randBytes(100), time.Unix(1, 0), 0o644)
	for _, p := range []struct {
		id   ClientID
		name string
		size int64
	}{{a.ID, "x", 1000}, {a.ID, "y", 20}, {b.ID, "x", 5}} {
		u, err := s.NewUpload(ctx, p.id, p.name, p.size, time.Unix(1, 0), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if p.name == "y" {
			if err := u.Checkpoint(ctx, nil); err != nil {
				t.Fatal(err)
			}
			u.Release() // parked for resume: still counts
		} else { // open, not yet checkpointed: counts too
			defer u.Discard(ctx)
		}
	}
	tests := []struct {
		name   string
		id     ClientID
		except string
		want   int64
		wantN  int
	}{
		{"open and parked uploads", a.ID, "", 1020, 2},
		{"a request for x replaces its own upload", a.ID, "x", 20, 1},
		{"committed files are not pending", a.ID, "y", 1000, 1},
		{"other client", b.ID, "", 5, 1},
		{"unknown client", ClientID{9}, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := s.Pending(ctx, tt.id, tt.except)
			if err != nil || got != tt.want || n != tt.wantN {
				t.Errorf("Pending = %d bytes, %d uploads, %v; want %d, %d", got, n, err, tt.want, tt.wantN)
			}
		})
	}
}

// BenchmarkUsage reads what a client with 20,000 stored versions uses, as
// a server with quotas does for every upload request.
func BenchmarkUsage(b *testing.B) {
	s, c := benchStore(b)
	tx, err := s.db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	const versions = 20000
	sha := make([]byte, 32)
	for i := range versions {
		if _, err := tx.Exec(`INSERT INTO files (client_id, name, version, size, mtime_ns, mode, crc, sha256, stored_at, path, verified)
			VALUES (?, ?, 1, 1000, 0, 420, 0, ?, 0, ?, 1)`, c.ID[:], fmt.Sprintf("d%d/f%d", i%100, i), sha, fmt.Sprintf("p/%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		bytes, n, err := s.Usage(b.Context(), c.ID)
		if err != nil || bytes != 1000*versions || n != versions {
			b.Fatalf("Usage = %d, %d, %v", bytes, n, err)
		}
	}
}

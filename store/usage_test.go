package store

import (
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
	put(t, s, b.ID, "x", randBytes(7), time.Unix(1, 0), 0o644)
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

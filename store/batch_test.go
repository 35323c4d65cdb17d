package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

// TestGroupCommit: commits and new uploads that arrive while a batch waits
// for the disk run together in the next one, each with its own outcome:
// versions of one name are numbered in order, a failing commit fails
// alone, and everything reads back.
func TestGroupCommit(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "c")
	const n = 48
	data := make([][]byte, n)
	ups := make([]*Upload, n)
	for i := range n {
		data[i] = randBytes(100 + i)
		u, err := s.NewUpload(ctx, c.ID, fmt.Sprintf("dir%d/f%d", i%3, i), int64(len(data[i])), time.Unix(int64(i), 0), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.WriteAt(data[i], 0); err != nil {
			t.Fatal(err)
		}
		ups[i] = u
	}
	// Eight of them are versions of one name.
	same := make([]*Upload, 8)
	for i := range same {
		u, err := s.NewUpload(ctx, c.ID, "same", 3, time.Unix(int64(i), 0), 0o600)
		if err != nil {
			t.Fatal(err)
		}
		u.WriteAt([]byte{byte(i), 1, 2}, 0)
		same[i] = u
	}
	// One whose row is gone: its commit must fail without failing others.
	doomed := ups[7]
	if err := doomed.Checkpoint(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, "DELETE FROM uploads WHERE id = ?", doomed.id[:]); err != nil {
		t.Fatal(err)
	}

	before := s.batches.Load()
	s.writeSem <- struct{}{} // hold the batcher while the commits queue
	var wg sync.WaitGroup
	errs := make([]error, n+len(same))
	for i, u := range append(append([]*Upload{}, ups...), same...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			crc, sha := sums(dataOf(t, u))
			_, _, errs[i] = u.Commit(ctx, crc, sha)
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.queued.Load() < n+int64(len(same)) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s.unlockWrite()
	wg.Wait()
	if b := s.batches.Load() - before; b > 3 {
		t.Errorf("%d commits queued together ran in %d transactions, want at most 3", n+len(same), b)
	}
	for i, err := range errs {
		if (i == 7) != (err != nil) {
			t.Errorf("commit %d: %v", i, err)
		}
	}
	for i := range n {
		if i == 7 {
			continue
		}
		fv, err := s.Latest(ctx, c.ID, fmt.Sprintf("dir%d/f%d", i%3, i))
		if err != nil {
			t.Fatal(err)
		}
		f, err := s.OpenVersion(ctx, c.ID, fv)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(got, data[i]) {
			t.Errorf("file %d reads back different bytes", i)
		}
	}
	vs, err := s.Versions(ctx, c.ID, "same")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != len(same) {
		t.Fatalf("%d versions of \"same\", want %d", len(vs), len(same))
	}
	for i, v := range vs {
		if v.Version != len(vs)-i && v.Version != i+1 {
			t.Fatalf("versions %v are not 1..%d", vs, len(same))
		}
	}
	if err := doomed.Discard(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	checkUsage(t, s) // with a commit that failed in the batch
}

func dataOf(t *testing.T, u *Upload) []byte {
	b := make([]byte, u.Size())
	if _, err := u.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Error(err)
	}
	return b
}

// benchStore opens a store in a temp dir, closed when b ends, with one
// client registered.
func benchStore(b *testing.B) (*Store, Client) {
	s, err := Open(b.Context(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	c, _, err := s.RegisterClient(b.Context(), "c", newKeyNoT())
	if err != nil {
		b.Fatal(err)
	}
	return s, c
}

// BenchmarkCommitSmall commits small uploads from 32 goroutines at once,
// as a client sending a tree does; the group commit lets them share fsyncs.
func BenchmarkCommitSmall(b *testing.B) {
	s, c := benchStore(b)
	data := randBytes(16 << 10)
	crc, sha := sums(data)
	var n sync.Mutex
	i := 0
	b.SetParallelism(16) // 32 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			i++
			name := fmt.Sprintf("d%d/f%d", i%10, i)
			n.Unlock()
			u, err := s.NewUpload(b.Context(), c.ID, name, int64(len(data)), time.Unix(1, 0), 0o644)
			if err != nil {
				b.Fatal(err)
			}
			u.WriteAt(data, 0)
			if _, _, err := u.Commit(b.Context(), crc, sha); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/float64(s.batches.Load()), "commits/txn")
}

// BenchmarkLatest looks up the newest version of a file, as every upload
// request of a tree does, with a context that can be cancelled, as a
// session's is (point: such lookups run without it).
func BenchmarkLatest(b *testing.B) {
	s, c := benchStore(b)
	data := randBytes(1024)
	crc, sha := sums(data)
	const files = 100
	for i := range files {
		u, err := s.NewUpload(b.Context(), c.ID, fmt.Sprintf("d/f%d", i), int64(len(data)), time.Unix(1, 0), 0o644)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := u.WriteAt(data, 0); err != nil {
			b.Fatal(err)
		}
		if _, _, err := u.Commit(b.Context(), crc, sha); err != nil {
			b.Fatal(err)
		}
	}
	names := make([]string, 2*files) // half stored, half not (a new file)
	for i := range names {
		names[i] = fmt.Sprintf("d/f%d", i)
	}
	for i := 0; b.Loop(); i++ {
		_, err := s.Latest(b.Context(), c.ID, names[i%len(names)])
		if err != nil && !errors.Is(err, ErrNotFound) {
			b.Fatal(err)
		}
	}
}

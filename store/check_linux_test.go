package store

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident returns how many bytes of [off, off+n) of the file at path are
// in the page cache.
func resident(t *testing.T, path string, off, n int64) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (n+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	var in int64
	for _, v := range vec {
		in += int64(v&1) * page
	}
	return in
}

// TestCheckDropsCache: a check leaves the page cache to the transfers:
// what it read a few MiB back is dropped while it reads on, and nothing
// of the file is left at the end, also when the file was written in one
// piece (the page cache then holds it in large folios, which a drop of
// exactly the range just read would not release).
func TestCheckDropsCache(t *testing.T) {
	dir := t.TempDir()
	probe := filepath.Join(dir, "probe")
	if err := os.WriteFile(probe, randBytes(1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(probe)
	if err != nil {
		t.Fatal(err)
	}
	f.Sync()
	dropCache(f, 0, 0)
	f.Close()
	if resident(t, probe, 0, 1<<20) != 0 {
		t.Skip("the page cache keeps what FADV_DONTNEED names on this file system")
	}
	os.Remove(probe)

	s := openStore(t, dir)
	c := register(t, s, "laptop")
	const size, lag = 32 << 20, 8 << 20
	data := randBytes(size)
	u, err := s.NewUpload(t.Context(), c.ID, "f", size, time.Unix(1, 0), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	crc, sha := sums(data)
	if _, _, err := u.Commit(t.Context(), crc, sha); err != nil {
		t.Fatal(err)
	}
	path := storedFile(t, s, c.ID, "f", 1)
	if resident(t, path, 0, size) == 0 {
		t.Skip("the stored file is not in the page cache after its commit")
	}
	var behind int64 = -1
	sum := func(_ context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
		buf := make([]byte, 1<<20)
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := r.ReadAt(buf, off); err != nil && err != io.EOF {
				return 0, [32]byte{}, err
			}
			if off == size/2 {
				behind = resident(t, path, 0, off-lag)
			}
		}
		return crc, sha, nil
	}
	if st, _ := runCheck(t, s.Check, CheckOptions{Sum: sum}); st.Versions != 1 || st.Damaged != 0 {
		t.Fatalf("check: %+v", st)
	}
	if behind != 0 {
		t.Errorf("halfway through, %d bytes read more than %d MiB before were still cached", behind, lag>>20)
	}
	if left := resident(t, path, 0, size); left != 0 {
		t.Errorf("after the check, %d bytes of the file are still cached", left)
	}
}

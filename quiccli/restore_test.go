package quiccli

import (
	"bytes"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

// TestRestoreSinkHashesAhead: the sink hashes the written prefix in the
// background while chunks still arrive (in any order), and the checksums
// it ends with are those of the whole file: read back from the file
// (chunks it may not keep), from the chunks it holds in memory, or a mix
// when more arrive out of order than it holds; through the page cache or
// with direct I/O.
func TestRestoreSinkHashesAhead(t *testing.T) {
	const chunk = 1 << 20
	for _, tc := range []struct {
		name string
		size int
		// the chunks held back until the rest is written, by index
		// (none: the last one)
		last []int
	}{
		{"in order", 3*proto.HashStep + 12345, nil},
		{"shuffled, first chunk last", 3*proto.HashStep + 1, []int{0}},
		{"smaller than a step", proto.HashStep - 1, nil},
		{"exactly two steps", 2 * proto.HashStep, []int{5}},
		{"more out of order than held", (maxHeld + 6) * chunk, []int{0, 1}},
	} {
		for _, mode := range []string{"read back", "memory", "memory, direct"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				data := make([]byte, tc.size)
				rand.NewChaCha8([32]byte{byte(tc.size), 7}).Read(data)
				rng := rand.New(rand.NewPCG(uint64(tc.size), 7))
				name := filepath.Join(t.TempDir(), "out")
				f, err := os.Create(name)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				var direct *os.File
				if mode == "memory, direct" {
					if direct = openDirect(name); direct == nil {
						t.Log("no direct I/O here: through the page cache")
					} else {
						defer direct.Close()
					}
				}
				bufs := newAlignedBuffers(chunk + proto.TagSize)
				var got int64
				k := newRestoreSink(f, direct, bufs, func(n int64) { got += n })
				if err := k.bind(&proto.RestoreReady{Size: uint64(tc.size)}); err != nil {
					t.Fatal(err)
				}
				n := (tc.size + chunk - 1) / chunk
				order := rng.Perm(n)
				if tc.name == "in order" {
					for i := range order {
						order[i] = i
					}
				}
				if tc.last == nil {
					tc.last = []int{n - 1}
				}
				held := map[int]bool{}
				for _, i := range tc.last {
					held[i] = true
				}
				kept, allocated := 0, 0
				put := func(i int) {
					off := i * chunk
					p := data[off:min(off+chunk, tc.size)]
					var keep func() []byte
					if mode != "read back" {
						// As a data stream does: the chunk in a lent
						// buffer, which the sink may keep.
						if len(bufs.free) == 0 {
							allocated++
						}
						b, _ := bufs.Get(len(p) + proto.TagSize)
						copy(b, p)
						p = b[:len(p)]
						keep = func() []byte { kept++; r := b; b = nil; return r }
						defer func() {
							if b != nil {
								bufs.Put(b)
							}
						}()
					}
					if err := k.receive(uint64(off), p, keep); err != nil {
						t.Fatal(err)
					}
				}
				for _, i := range order {
					if !held[i] {
						put(i)
					}
				}
				k.bg.Wait() // let the hasher catch up with what it can see
				k.mu.Lock()
				hashed, prefix := k.hashed, int64(k.wrote.Prefix())
				k.mu.Unlock()
				wantAhead := tc.size >= proto.HashStep && prefix >= proto.HashStep
				if wantAhead && hashed < prefix-proto.HashStep {
					t.Errorf("hashed %d of a %d-byte written prefix in the background", hashed, prefix)
				}
				if mode == "read back" && !wantAhead && hashed != 0 {
					t.Errorf("hashed %d bytes of a prefix of %d, under one step", hashed, prefix)
				}
				if mode != "read back" && hashed != prefix {
					t.Errorf("hashed %d bytes of a prefix of %d held in memory", hashed, prefix)
				}
				for _, i := range tc.last {
					put(i)
				}
				<-k.done
				if k.err != nil || got != int64(tc.size) {
					t.Fatalf("sink ended with %v after %d of %d bytes", k.err, got, tc.size)
				}
				crc, sha, err := k.checksums()
				wantCRC, wantSHA, _ := proto.FileChecksums(strings.NewReader(string(data)), int64(tc.size))
				if err != nil || crc != wantCRC || sha != wantSHA {
					t.Errorf("checksums %d %x (%v), want %d %x", crc, sha[:4], err, wantCRC, wantSHA[:4])
				}
				if onDisk, _ := os.ReadFile(name); !bytes.Equal(onDisk, data) {
					t.Error("the file on disk differs from what was received")
				}
				if mode != "read back" {
					// Every buffer back: the sink gave back all it kept.
					if kept == 0 || len(k.held) != 0 || len(bufs.free) != min(allocated, alignedFree) {
						t.Errorf("%d chunks kept, %d still held, %d of %d buffers given back", kept, len(k.held), len(bufs.free), allocated)
					}
				}
			})
		}
	}
}

// TestRestoreDetectsCorruption: a stored file rots on the server's disk
// (one byte flipped, in the hashed-ahead part or at the very end). The
// restore fails with a mismatch, puts nothing at the destination and
// leaves no temporary file behind.
func TestRestoreDetectsCorruption(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	const size = 2*proto.HashStep + 100
	src := filepath.Join(t.TempDir(), "big.bin")
	writeRandom(t, src, size, 31)
	s := connect(t, ctx, c)
	sendPaths(t, ctx, s, SendOptions{Paths: []string{src}})
	var stored string
	filepath.WalkDir(srv.Dir, func(p string, d fs.DirEntry, err error) error {
		if info, _ := d.Info(); err == nil && d.Type().IsRegular() && info.Size() == size {
			stored = p
		}
		return nil
	})
	if stored == "" {
		t.Fatal("stored file not found on the server")
	}
	for _, off := range []int64{proto.HashStep / 2, size - 1} {
		flip(t, stored, off)
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		res, err := s.Restore(ctx, RestoreOptions{Name: "big.bin", Output: out}, nopReporter{})
		if err == nil && (res.Failed == 0 || !errors.Is(res.FirstErr, errRestoreMismatch)) {
			t.Errorf("byte %d flipped: restore err %v, failed %d (%v); want a mismatch", off, err, res.Failed, res.FirstErr)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("byte %d flipped: %s holds %v after the failed restore, want nothing", off, dir, entries)
		}
		flip(t, stored, off) // back as it was
	}
	if err := s.Err(); err != nil {
		t.Fatalf("session ended: %v", err)
	}
}

// flip inverts the byte at off in the file at path.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

package quiccli

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
					if direct = openDirect(f); direct == nil {
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
					if kept == 0 || len(k.held) != 0 || len(bufs.free) != min(allocated, cap(bufs.free)) || bufs.held.Load() != 0 {
						t.Errorf("%d chunks kept, %d still held, %d of %d buffers given back", kept, len(k.held), len(bufs.free), allocated)
					}
				}
			})
		}
	}
}

// TestRestoreSinkDirectRefused: a file system that refuses a direct write
// (EINVAL) gets that chunk and the rest through the page cache, and the
// file comes out whole.
func TestRestoreSinkDirectRefused(t *testing.T) {
	name := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	direct := openDirect(f)
	if direct == nil {
		t.Skip("no direct I/O here")
	}
	defer direct.Close()
	refused := 0
	defer func(w func(*os.File, []byte, int64) error) { directWrite = w }(directWrite)
	directWrite = func(*os.File, []byte, int64) error { refused++; return syscall.EINVAL }

	const chunk = 1 << 20
	data := make([]byte, 3*chunk+100)
	rand.NewChaCha8([32]byte{9}).Read(data)
	bufs := newAlignedBuffers(chunk + proto.TagSize)
	k := newRestoreSink(f, direct, bufs, nil)
	if err := k.bind(&proto.RestoreReady{Size: uint64(len(data))}); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += chunk {
		b, _ := bufs.Get(chunk + proto.TagSize)
		p := b[:copy(b, data[off:min(off+chunk, len(data))])]
		if err := k.receive(uint64(off), p, nil); err != nil {
			t.Fatal(err)
		}
	}
	<-k.done
	crc, sha, err := k.checksums()
	wantCRC, wantSHA, _ := proto.FileChecksums(bytes.NewReader(data), int64(len(data)))
	if k.err != nil || err != nil || crc != wantCRC || sha != wantSHA {
		t.Fatalf("sink ended with %v, checksums %v; want the file's", k.err, err)
	}
	if onDisk, _ := os.ReadFile(name); !bytes.Equal(onDisk, data) {
		t.Error("the file on disk differs from what was received")
	}
	if refused != 1 || !k.noDirect.Load() {
		t.Errorf("%d direct writes tried after a refusal (noDirect %v), want 1 in all", refused, k.noDirect.Load())
	}
}

// TestOpenDirectSameFile: the direct descriptor is opened by name, so it
// must still lead to the file the sink writes and hashes: a name replaced
// by another file or by a symlink gets no direct descriptor.
func TestOpenDirectSameFile(t *testing.T) {
	tests := []struct {
		name    string
		replace func(t *testing.T, path, other string)
		ok      bool
	}{
		{"untouched", func(*testing.T, string, string) {}, true},
		{"replaced by a file", func(t *testing.T, path, other string) {
			if err := os.Rename(other, path); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"replaced by a symlink", func(t *testing.T, path, other string) {
			os.Remove(path)
			if err := os.Symlink(other, path); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path, other := filepath.Join(dir, "tmp"), filepath.Join(dir, "other")
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := os.WriteFile(other, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if probe := openDirect(f); probe == nil {
				t.Skip("no direct I/O here")
			} else {
				probe.Close()
			}
			tt.replace(t, path, other)
			d := openDirect(f)
			if d != nil {
				d.Close()
			}
			if (d != nil) != tt.ok {
				t.Errorf("openDirect = %v, want a descriptor %v", d != nil, tt.ok)
			}
		})
	}
}

// TestRestoreSinksShareHeldBudget: the sinks of a session hold at most the
// session's budget of chunks between them, whatever order the server
// sends them in, and still end with the right checksums.
func TestRestoreSinksShareHeldBudget(t *testing.T) {
	const chunk = 1 << 20
	bufs := newAlignedBuffers(chunk + proto.TagSize)
	bufs.holdLimit = 5 // for the test: two sinks, 8 chunks each out of order
	dir := t.TempDir()
	type file struct {
		data []byte
		name string
		k    *restoreSink
	}
	var files []*file
	for i := range 2 {
		fl := &file{data: make([]byte, 9*chunk), name: filepath.Join(dir, fmt.Sprint(i))}
		rand.NewChaCha8([32]byte{byte(i), 3}).Read(fl.data)
		f, err := os.Create(fl.name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fl.k = newRestoreSink(f, nil, bufs, nil)
		if err := fl.k.bind(&proto.RestoreReady{Size: uint64(len(fl.data))}); err != nil {
			t.Fatal(err)
		}
		files = append(files, fl)
	}
	put := func(fl *file, i int) {
		b, _ := bufs.Get(chunk + proto.TagSize)
		p := b[:copy(b, fl.data[i*chunk:(i+1)*chunk])]
		keep := func() []byte { r := b; b = nil; return r }
		if err := fl.k.receive(uint64(i*chunk), p, keep); err != nil {
			t.Fatal(err)
		}
		if b != nil {
			bufs.Put(b)
		}
	}
	for i := 8; i >= 1; i-- { // every chunk but the first, last first
		for _, fl := range files {
			put(fl, i)
			if h := bufs.held.Load(); h > bufs.holdLimit {
				t.Fatalf("%d chunks held, budget %d", h, bufs.holdLimit)
			}
		}
	}
	for _, fl := range files {
		put(fl, 0)
		<-fl.k.done
		crc, sha, err := fl.k.checksums()
		wantCRC, wantSHA, _ := proto.FileChecksums(bytes.NewReader(fl.data), int64(len(fl.data)))
		if err != nil || crc != wantCRC || sha != wantSHA {
			t.Errorf("%s: checksums %v, want the file's", fl.name, err)
		}
	}
	if h := bufs.held.Load(); h != 0 {
		t.Errorf("%d chunks still counted as held after both files", h)
	}
}

// TestRestoreDetectsCorruption: a stored file rots on the server's disk
// (one byte flipped, in the hashed-ahead part or at the very end). The
// restore fails with a mismatch (or, once the server has checked its copy
// and marked it, with the server's CodeDamaged), puts nothing at the
// destination and leaves no temporary file behind.
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
		damaged := proto.CodeOf(res.FirstErr) == proto.CodeDamaged
		if err == nil && (res.Failed == 0 || !errors.Is(res.FirstErr, errRestoreMismatch) && !damaged) {
			t.Errorf("byte %d flipped: restore err %v, failed %d (%v); want a mismatch, or damaged", off, err, res.Failed, res.FirstErr)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("byte %d flipped: %s holds %v after the failed restore, want nothing", off, dir, entries)
		}
		flip(t, stored, off) // back as it was
		// Sending the file again heals the damage mark the server may
		// have set meanwhile.
		sendPaths(t, ctx, s, SendOptions{Paths: []string{src}})
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

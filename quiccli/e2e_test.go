package quiccli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// testChunk is the chunk size the end-to-end tests run with: small, so
// files of a few hundred KiB already span many chunks and streams.
const testChunk = 64 << 10

func startServer(t *testing.T) *srvtest.Server {
	return srvtest.Start(t, func(s *quicsrv.Server) { s.ChunkSize = testChunk })
}

// newClient returns a client with its own home; 2048-bit keys keep the
// tests quick.
func newClient(t *testing.T) *Client {
	return &Client{Home: filepath.Join(t.TempDir(), "home"), KeyBits: 2048, Out: io.Discard, Err: io.Discard}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func register(t *testing.T, ctx context.Context, c *Client, srv *srvtest.Server, name string) *Identity {
	t.Helper()
	id, err := c.Register(ctx, srv.Addr, name, RegisterOptions{Fingerprint: srv.Fingerprint})
	if err != nil {
		t.Fatalf("Register(%q): %v", name, err)
	}
	return id
}

func connect(t *testing.T, ctx context.Context, c *Client) *Session {
	t.Helper()
	s, _, err := c.Connect(ctx, "", "")
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// nopReporter discards progress.
type nopReporter struct{}

func (nopReporter) Start(int, int64)                {}
func (nopReporter) File(string, int64) FileProgress { return nopFile{} }
func (nopReporter) Warn(string, ...any)             {}
func (nopReporter) Interrupt()                      {}
func (nopReporter) Close()                          {}

type nopFile struct{}

func (nopFile) Add(int64)          {}
func (nopFile) Retry()             {}
func (nopFile) Done(string, error) {}

func writeRandom(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	b := make([]byte, size)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
	return b
}

// makeTree writes the mix of files the demo uses, scaled down.
func makeTree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	files := map[string]int{
		"empty":           0,
		"one":             1,
		"chunk-minus-1":   testChunk - 1,
		"chunk":           testChunk,
		"chunk-plus-1":    testChunk + 1,
		"big":             3<<20 + 12345,
		"sub/a.txt":       1000,
		"sub/deeper/b":    70000,
		"sub/deeper/c d":  5,
		"sub/ünïcødé.bin": 4096,
	}
	want := map[string][]byte{}
	seed := uint64(1)
	for name, size := range files {
		seed++
		want[filepath.Base(root)+"/"+name] = writeRandom(t, filepath.Join(root, filepath.FromSlash(name)), size, seed)
	}
	return want
}

// dirsOf returns the directories a send of the stored names records: every
// parent of each name, up to the top.
func dirsOf[V any](names map[string]V) map[string]bool {
	dirs := map[string]bool{}
	for name := range names {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	return dirs
}

// entriesOf is how many entries a send of the stored names records: the
// files and their directories.
func entriesOf[V any](names map[string]V) int { return len(names) + len(dirsOf(names)) }

func sendPaths(t *testing.T, ctx context.Context, s *Session, opts SendOptions) *SendResult {
	t.Helper()
	res := s.Send(ctx, opts, nopReporter{})
	if res.FirstErr != nil {
		t.Logf("send: first error: %v", res.FirstErr)
	}
	return res
}

// assertRestores restores name over s and compares it with want.
func assertRestores(t *testing.T, ctx context.Context, s *Session, name string, want []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	restoreAll(t, ctx, s, name, out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Errorf("restored %s: %d bytes that differ from the %d expected", name, len(got), len(want))
	}
}

// assertResendBound fails if sending a size-byte file took more than 1.05
// times its size in all: an interruption may cost a little, not a restart.
func assertResendBound(t *testing.T, sent, size int64) {
	t.Helper()
	t.Logf("sent %d bytes in all for a %d-byte file: %.3f×", sent, size, float64(sent)/float64(size))
	if float64(sent) > 1.05*float64(size) {
		t.Errorf("sent %d bytes in all for a %d-byte file: over 1.05×", sent, size)
	}
}

func restoreAll(t *testing.T, ctx context.Context, s *Session, name, out string) *RestoreResult {
	t.Helper()
	res, err := s.Restore(ctx, RestoreOptions{Name: name, Output: out}, nopReporter{})
	if err != nil {
		t.Fatalf("Restore(%q): %v", name, err)
	}
	return res
}

func TestEndToEndBackupListRestore(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")

	src := filepath.Join(t.TempDir(), "data")
	want := makeTree(t, src)
	s := connect(t, ctx, c)
	res := sendPaths(t, ctx, s, SendOptions{Paths: []string{src}})
	if res.Sent != entriesOf(want) || res.Failed != 0 || res.Unchanged != 0 {
		t.Fatalf("first send: sent %d, unchanged %d, failed %d; want %d, 0, 0", res.Sent, res.Unchanged, res.Failed, entriesOf(want))
	}

	entries, err := s.List(ctx, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != entriesOf(want) {
		t.Fatalf("ls lists %d entries, want %d", len(entries), entriesOf(want))
	}
	dirs := dirsOf(want)
	for _, e := range entries {
		if dirs[e.Name] {
			if e.Kind != proto.KindDir || e.Size != 0 || !e.Verified {
				t.Errorf("ls %q: kind %v, size %d, verified %v; want a verified directory", e.Name, e.Kind, e.Size, e.Verified)
			}
			continue
		}
		data, ok := want[e.Name]
		if !ok {
			t.Errorf("ls lists %q, which was never sent", e.Name)
			continue
		}
		if e.Size != uint64(len(data)) || e.CRC != proto.CksumBytes(data) || e.SHA256 != sha256.Sum256(data) || !e.Verified || e.Version != 1 {
			t.Errorf("ls %q: size %d crc %d verified %v version %d; want %d, %d, true, 1", e.Name, e.Size, e.CRC, e.Verified, e.Version, len(data), proto.CksumBytes(data))
		}
	}

	out := filepath.Join(t.TempDir(), "restored")
	rres := restoreAll(t, ctx, s, "data", out)
	if rres.Files != len(want) || rres.Failed != 0 {
		t.Fatalf("restore: %d files, %d failed; want %d, 0", rres.Files, rres.Failed, len(want))
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(strings.TrimPrefix(name, "data/"))))
		if err != nil {
			t.Errorf("restored %q: %v", name, err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("restored %q differs from the original (%d bytes, want %d)", name, len(got), len(data))
		}
	}
	// Modification time and mode come back too.
	fi, err := os.Stat(filepath.Join(out, "big"))
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.Stat(filepath.Join(src, "big"))
	if !fi.ModTime().Equal(orig.ModTime()) || fi.Mode().Perm() != orig.Mode().Perm() {
		t.Errorf("restored big: mtime %v mode %v, want %v %v", fi.ModTime(), fi.Mode().Perm(), orig.ModTime(), orig.Mode().Perm())
	}

	// A second send sends nothing: quick check, then content check.
	for _, checksum := range []bool{false, true} {
		res = sendPaths(t, ctx, s, SendOptions{Paths: []string{src}, Checksum: checksum})
		if res.Unchanged != entriesOf(want) || res.Sent != 0 || res.Failed != 0 || res.Bytes != 0 {
			t.Errorf("send again (checksum=%v): unchanged %d, sent %d, failed %d, bytes %d; want %d, 0, 0, 0", checksum, res.Unchanged, res.Sent, res.Failed, res.Bytes, entriesOf(want))
		}
	}
}

func TestNewVersionAndRestoreOld(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	dir := t.TempDir()
	path := filepath.Join(dir, "notes.txt")
	v1 := writeRandom(t, path, 200000, 1)
	s := connect(t, ctx, c)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Fatalf("send v1: sent %d, want 1", res.Sent)
	}
	v2 := writeRandom(t, path, 150000, 2)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Fatalf("send v2: sent %d, want 1", res.Sent)
	}
	all, err := s.List(ctx, "notes.txt", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Version != 1 || all[1].Version != 2 || all[1].Versions != 2 {
		t.Fatalf("ls --versions = %+v, want versions 1 and 2", all)
	}
	for _, tc := range []struct {
		version int
		want    []byte
	}{{1, v1}, {2, v2}, {0, v2}} {
		out := filepath.Join(t.TempDir(), "out")
		if _, err := s.Restore(ctx, RestoreOptions{Name: "notes.txt", Version: tc.version, Output: out}, nopReporter{}); err != nil {
			t.Fatalf("restore version %d: %v", tc.version, err)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, tc.want) {
			t.Errorf("restore version %d: got %d bytes that differ from the version sent", tc.version, len(got))
		}
	}
	// Sending the old content again is a new version whose bytes equal v1.
	if err := os.WriteFile(path, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Fatalf("send v1 again: sent %d, want 1", res.Sent)
	}
	latest, _ := s.List(ctx, "notes.txt", false)
	if len(latest) != 1 || latest[0].Version != 3 || latest[0].CRC != proto.CksumBytes(v1) {
		t.Errorf("after resending v1: %+v, want version 3 with v1's cksum", latest)
	}
}

// TestChangedWhileReadIsStoredAsRead: a file that changes while it is
// sent is stored as it was read, in one attempt, with checksums of exactly
// those bytes, and marked changed (as restic, borg and tar do), whether the
// client hashed it beforehand (-c) or not, and however it changed.
func TestChangedWhileReadIsStoredAsRead(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	s := connect(t, ctx, c)
	tests := []struct {
		name     string
		checksum bool
		at       int64 // the file changes once this much is read
		change   func(path string, old []byte) []byte
	}{
		{"rewritten, hashed first", true, testChunk, func(path string, old []byte) []byte {
			return writeRandom(t, path, len(old), 8)
		}},
		{"rewritten in place, new mtime", false, 2 * testChunk, func(path string, old []byte) []byte {
			b := writeRandom(t, path, len(old), 2)
			later := time.Now().Add(time.Second)
			os.Chtimes(path, later, later)
			return b
		}},
		{"a log that grows", false, testChunk, func(path string, old []byte) []byte {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			more := bytes.Repeat([]byte("log line\n"), 1000)
			f.Write(more)
			return append(append([]byte(nil), old...), more...)
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("moving-%d.bin", i)
			path := filepath.Join(t.TempDir(), name)
			old := writeRandom(t, path, 6*testChunk, uint64(i+1))
			var now []byte
			hook := func(_ string, attempt int, off int64) {
				if attempt == 1 && off == tt.at {
					now = tt.change(path, old)
				}
			}
			fp := &recordingFile{}
			st, err := s.sendFile(ctx, sendItem{path: path, name: name}, SendOptions{Checksum: tt.checksum, testHookChunkRead: hook}, fp, new(atomic.Int64))
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			if st.Attempts != 1 || fp.retries != 0 || !st.Changed {
				t.Errorf("attempts %d, retries %d, changed %v; want 1, 0, true", st.Attempts, fp.retries, st.Changed)
			}
			if !strings.Contains(describe(st), "changed while read") {
				t.Errorf("result %q does not say the file changed", describe(st))
			}
			// What was read: the old bytes before the change, the new ones
			// after it, up to the size the file had when it was opened.
			read := append(append([]byte(nil), old[:tt.at]...), now[tt.at:len(old)]...)
			out := filepath.Join(t.TempDir(), "out")
			restoreAll(t, ctx, s, name, out)
			if got, _ := os.ReadFile(out); !bytes.Equal(got, read) {
				t.Errorf("restored %d bytes, not the %d bytes that were read", len(got), len(read))
			}
		})
	}
	assertNoTempFiles(t, srv)
}

// TestShrinkWhileReading: a file that shrinks under the reader cannot give
// the size it announced: it is read once more, whole; if it shrinks again,
// it is padded with zeros to its new announced size, as tar does, and
// marked changed. Never more than two reads.
func TestShrinkWhileReading(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	s := connect(t, ctx, c)
	for _, again := range []bool{false, true} {
		t.Run(fmt.Sprintf("shrinks again %v", again), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "shrinking.bin")
			writeRandom(t, path, 6*testChunk, 1)
			var second []byte
			attempts := map[int]bool{}
			hook := func(_ string, attempt int, off int64) {
				if off != testChunk {
					return
				}
				attempts[attempt] = true
				switch {
				case attempt == 1:
					second = writeRandom(t, path, 4*testChunk, 2)
				case attempt == 2 && again:
					if err := os.Truncate(path, 3*testChunk); err != nil {
						t.Fatal(err)
					}
					second = append(second[:3*testChunk], make([]byte, testChunk)...)
				}
			}
			fp := &recordingFile{}
			st, err := s.sendFile(ctx, sendItem{path: path, name: "shrinking.bin"}, SendOptions{testHookChunkRead: hook}, fp, new(atomic.Int64))
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			if st.Attempts != 2 || !st.Changed || len(attempts) != 2 {
				t.Errorf("attempts %d (%v), changed %v; want 2 reads and changed", st.Attempts, attempts, st.Changed)
			}
			out := filepath.Join(t.TempDir(), "out")
			restoreAll(t, ctx, s, "shrinking.bin", out)
			if got, _ := os.ReadFile(out); !bytes.Equal(got, second) {
				t.Errorf("restored %d bytes, want the %d bytes of the second read", len(got), len(second))
			}
		})
	}
	assertNoTempFiles(t, srv)
}

// TestFourthFailureGivesUp: checksums that do not match although the file
// did not change (damage between the client's hash and the server's disk)
// are sent again up to three times, then the file fails.
func TestFourthFailureGivesUp(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "restless.bin")
	writeRandom(t, path, 4*testChunk, 1)
	attempts := map[int]bool{}
	corrupt := func(_ string, attempt int, b []byte) {
		attempts[attempt] = true
		b[0] ^= 1 // after the client hashed it
	}
	s := connect(t, ctx, c)
	fp := &recordingFile{}
	_, err := s.sendFile(ctx, sendItem{path: path, name: "restless.bin"}, SendOptions{testHookCorrupt: corrupt}, fp, new(atomic.Int64))
	if !errors.Is(err, errMismatch) {
		t.Fatalf("send error = %v, want a checksum mismatch", err)
	}
	if len(attempts) != 4 || fp.retries != 3 {
		t.Errorf("attempts %v, retries %d; want 4 attempts and 3 resends", attempts, fp.retries)
	}
	entries, err := s.List(ctx, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("after four failures the server lists %+v, want nothing", entries)
	}
	assertNoTempFiles(t, srv)
	// The session is still usable.
	writeRandom(t, path, 1000, 9)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{path}}); res.Sent != 1 {
		t.Errorf("send after giving up: sent %d, want 1", res.Sent)
	}
}

// assertNoTempFiles checks the server kept no partial upload.
func assertNoTempFiles(t *testing.T, srv *srvtest.Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(srv.Dir, "tmp"))
		var names []string
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				names = append(names, e.Name())
			}
		}
		if len(names) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("server tmp holds %v, want nothing", names)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type recordingFile struct {
	mu      sync.Mutex
	added   int64
	retries int
}

func (f *recordingFile) Add(n int64)        { f.mu.Lock(); f.added += n; f.mu.Unlock() }
func (f *recordingFile) Retry()             { f.mu.Lock(); f.retries++; f.mu.Unlock() }
func (f *recordingFile) Done(string, error) {}

func TestReconnectGetsNewSessionKey(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	id := register(t, ctx, c, srv, "alice")
	var keys []proto.SessionKey
	testHookSessionKey = func(k *proto.SessionKey) { keys = append(keys, *k) }
	t.Cleanup(func() { testHookSessionKey = nil })
	path := filepath.Join(t.TempDir(), "f")
	writeRandom(t, path, 3*testChunk, 1)
	for i := range 3 {
		s, got, err := c.Connect(ctx, "", "")
		if err != nil {
			t.Fatalf("reconnect: %v", err)
		}
		if got.ClientID != id.ClientID || fmt.Sprintf("%x", s.ClientID) != id.ClientID {
			t.Errorf("reconnected as %x, want %s", s.ClientID, id.ClientID)
		}
		writeRandom(t, path, 3*testChunk, uint64(i+10))
		if res := s.Send(ctx, SendOptions{Paths: []string{path}}, nopReporter{}); res.Sent != 1 {
			t.Errorf("session %d: sent %d, want 1 (%v)", i, res.Sent, res.FirstErr)
		}
		s.Close()
	}
	if len(keys) != 3 {
		t.Fatalf("saw %d session keys, want 3", len(keys))
	}
	if keys[0] == keys[1] || keys[1] == keys[2] || keys[0] == keys[2] {
		t.Errorf("session keys repeat across sessions")
	}
	// No session key reaches the disk, on either side.
	for _, dir := range []string{c.Home, srv.Dir} {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, k := range keys {
				if bytes.Contains(b, k[:]) {
					t.Errorf("%s contains a session key", p)
				}
			}
			return nil
		})
	}
}

func TestRegistrationErrors(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	alice := newClient(t)
	id := register(t, ctx, alice, srv, "alice")

	// Registering again with the same key is idempotent.
	again := register(t, ctx, alice, srv, "alice")
	if again.ClientID != id.ClientID {
		t.Errorf("re-register gave client %s, want %s", again.ClientID, id.ClientID)
	}
	// Another key cannot take the name.
	mallory := newClient(t)
	_, err := mallory.Register(ctx, srv.Addr, "alice", RegisterOptions{Fingerprint: srv.Fingerprint})
	if err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Errorf("register taken name: err = %v, want 'already registered'", err)
	}
	// Client IDs are random, not derived from the name.
	bob := newClient(t)
	bid := register(t, ctx, bob, srv, "bob")
	if bid.ClientID == id.ClientID || len(bid.ClientID) != 32 {
		t.Errorf("client IDs %s and %s", id.ClientID, bid.ClientID)
	}
	// Key and identity file modes.
	for _, f := range []string{keyFile, identityFile} {
		fi, err := os.Stat(filepath.Join(alice.Home, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v err %v, want 0600", f, fi.Mode().Perm(), err)
		}
	}
}

func TestUnknownClientIsRejected(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	id := register(t, ctx, c, srv, "alice")
	id.ClientID = strings.Repeat("ab", 16)
	if err := id.save(c.Home); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Connect(ctx, "", "")
	if err == nil || !strings.Contains(err.Error(), "reconnect rejected") || !strings.Contains(err.Error(), "qbackup register") {
		t.Errorf("Connect with an unknown ID: err = %v, want 'reconnect rejected ... qbackup register'", err)
	}
}

func TestWrongProofIsRejected(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	alice := newClient(t)
	register(t, ctx, alice, srv, "alice")
	// Mallory knows alice's client ID but not her key.
	mallory := newClient(t)
	register(t, ctx, mallory, srv, "mallory")
	aliceID, _ := loadIdentity(alice.Home)
	if err := aliceID.save(mallory.Home); err != nil {
		t.Fatal(err)
	}
	_, _, err := mallory.Connect(ctx, "", "")
	if err == nil || !strings.Contains(err.Error(), "reconnect rejected") || !strings.Contains(err.Error(), "key") {
		t.Errorf("Connect with another client's ID: err = %v, want a rejected proof", err)
	}
	// And alice is unaffected.
	s := connect(t, ctx, alice)
	if _, err := s.List(ctx, "", false); err != nil {
		t.Errorf("alice after mallory's attempt: %v", err)
	}
}

func TestChangedServerCertificate(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	// Trust on first use: no fingerprint given.
	id, err := c.Register(ctx, srv.Addr, "alice", RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if id.Fingerprint != srv.Fingerprint {
		t.Fatalf("pinned %s on first use, want %s", id.Fingerprint, srv.Fingerprint)
	}
	old := srv.Fingerprint
	// The server gets a new certificate.
	if err := os.RemoveAll(filepath.Join(srv.Dir, "tls")); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	if srv.Fingerprint == old {
		t.Fatal("restart kept the old certificate")
	}
	_, _, err = c.Connect(ctx, "", "")
	var cc *CertChangedError
	if !errors.As(err, &cc) || cc.Pinned != old || cc.Presented != srv.Fingerprint {
		t.Fatalf("Connect after the certificate changed: err = %v, want CertChangedError(%s -> %s)", err, old, srv.Fingerprint)
	}
	if !strings.Contains(err.Error(), old) || !strings.Contains(err.Error(), srv.Fingerprint) || !strings.Contains(err.Error(), "--fingerprint") {
		t.Errorf("error %q should name both fingerprints and how to proceed", err)
	}
	// Pinning a wrong fingerprint up front fails the same way.
	other := newClient(t)
	_, err = other.Register(ctx, srv.Addr, "bob", RegisterOptions{Fingerprint: old})
	if !errors.As(err, &cc) {
		t.Errorf("register with a wrong --fingerprint: err = %v, want CertChangedError", err)
	}
	// Re-pinning the new certificate on purpose works.
	if _, err := c.Register(ctx, srv.Addr, "alice", RegisterOptions{Fingerprint: srv.Fingerprint}); err != nil {
		t.Fatalf("re-pin: %v", err)
	}
	connect(t, ctx, c)
}

func TestClientsAreIsolated(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	type client struct {
		c    *Client
		data []byte
	}
	var clients []client
	for i, name := range []string{"alice", "bob", "carol", "dave"} {
		c := newClient(t)
		register(t, ctx, c, srv, name)
		clients = append(clients, client{c: c, data: writeRandom(t, filepath.Join(t.TempDir(), "same.txt"), 100000+i, uint64(i))})
	}
	// All at once, the same file name.
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := clients[i]
			dir := t.TempDir()
			path := filepath.Join(dir, "same.txt")
			os.WriteFile(path, cl.data, 0o644)
			s, _, err := cl.c.Connect(ctx, "", "")
			if err != nil {
				t.Errorf("connect: %v", err)
				return
			}
			defer s.Close()
			if res := s.Send(ctx, SendOptions{Paths: []string{path}}, nopReporter{}); res.Sent != 1 {
				t.Errorf("client %d: sent %d, want 1 (%v)", i, res.Sent, res.FirstErr)
			}
		}()
	}
	wg.Wait()
	for i, cl := range clients {
		s := connect(t, ctx, cl.c)
		entries, err := s.List(ctx, "", true)
		if err != nil || len(entries) != 1 || entries[0].Name != "same.txt" {
			t.Errorf("client %d lists %+v (%v), want only its own same.txt", i, entries, err)
			continue
		}
		out := filepath.Join(t.TempDir(), "out")
		restoreAll(t, ctx, s, "same.txt", out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, cl.data) {
			t.Errorf("client %d restored another client's bytes", i)
		}
	}
}

func TestRestoreRefusesToOverwrite(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	path := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, path, 5000, 1)
	s := connect(t, ctx, c)
	sendPaths(t, ctx, s, SendOptions{Paths: []string{path}})
	out := filepath.Join(t.TempDir(), "out")
	os.WriteFile(out, []byte("precious"), 0o644)
	res, err := s.Restore(ctx, RestoreOptions{Name: "f", Output: out}, nopReporter{})
	if err != nil || res.Skipped != 1 || res.Restored != 0 {
		t.Errorf("restore over an existing file without --overwrite: %+v, %v; want it skipped", res, err)
	}
	if got, _ := os.ReadFile(out); string(got) != "precious" {
		t.Errorf("existing file was changed")
	}
	if _, err := s.Restore(ctx, RestoreOptions{Name: "f", Output: out, Overwrite: true}, nopReporter{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Errorf("--overwrite did not restore the stored bytes")
	}
	if _, err := s.Restore(ctx, RestoreOptions{Name: "nope", Output: out}, nopReporter{}); err == nil || !strings.Contains(err.Error(), "nothing named") {
		t.Errorf("restore of a missing name: err = %v", err)
	}
}

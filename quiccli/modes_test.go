//go:build unix

package quiccli

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

// auditModes walks root and checks that every directory (root included)
// is 0700 and every regular file is 0600, or the mode allow gives for its
// slash-separated path relative to root. Nothing else (symlinks, devices,
// set-ID or sticky bits) may be there. It returns what it saw.
func auditModes(t *testing.T, root string, allow map[string]fs.FileMode) map[string]fs.FileMode {
	t.Helper()
	seen := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		m := fi.Mode()
		seen[rel] = m
		want, ok := allow[rel]
		switch {
		case m.IsDir():
			if !ok {
				want = 0o700
			}
		case m.IsRegular():
			if !ok {
				want = 0o600
			}
		default:
			t.Errorf("%s: %s is a %v, want only directories and regular files", root, rel, m.Type())
			return nil
		}
		if m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			t.Errorf("%s: %s has mode %v, with set-ID or sticky bits", root, rel, m)
		}
		if m.Perm() != want {
			t.Errorf("%s: %s has mode %#o, want %#o", root, rel, m.Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return seen
}

// logModes logs what auditModes saw, sorted.
func logModes(t *testing.T, what string, seen map[string]fs.FileMode) {
	t.Helper()
	var lines []string
	for rel, m := range seen {
		lines = append(lines, m.String()+"  "+rel)
	}
	sort.Strings(lines)
	t.Logf("%s:\n  %s", what, strings.Join(lines, "\n  "))
}

// TestFileModes checks that what the server keeps (database, stored files,
// temp files, TLS key) and what the client keeps (key, identity with the
// pinned certificate) is private to its owner: directories 0700, files
// 0600, under a umask (022) that would let a careless create be readable
// by everyone. The umask is process-wide, so this test must not run in
// parallel with others (no t.Parallel).
func TestFileModes(t *testing.T) {
	old := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(old) })

	ctx := testContext(t)
	base := t.TempDir()
	// Neither directory exists yet: server and client create them.
	data := filepath.Join(base, "srv", "data")
	home := filepath.Join(base, "cli", "config", "qbackup")
	srv := srvtest.StartIn(t, data, func(s *quicsrv.Server) { s.ChunkSize = testChunk })
	c := &Client{Home: home, KeyBits: 2048, Out: io.Discard, Err: io.Discard}
	id := register(t, ctx, c, srv, "alice")

	// A small tree whose files have all sorts of modes, some open to
	// everyone: the server must store them privately all the same, and a
	// restore must give back the mode recorded at backup.
	src := filepath.Join(base, "src", "tree")
	modes := map[string]fs.FileMode{
		"private":        0o600,
		"group-readable": 0o640,
		"script":         0o755,
		"read-only":      0o444,
		"sub/shared":     0o666,
		"sub/deep/plain": 0o644,
		"sub/deep/empty": 0o600,
	}
	for name, mode := range modes {
		p := filepath.Join(src, filepath.FromSlash(name))
		size := 3*testChunk + len(name)
		if strings.HasSuffix(name, "empty") {
			size = 0
		}
		writeRandom(t, p, size, uint64(len(name)))
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	dirModes := map[string]fs.FileMode{".": 0o755, "sub": 0o750, "sub/deep": 0o711}
	for name, mode := range dirModes {
		if err := os.Chmod(filepath.Join(src, filepath.FromSlash(name)), mode); err != nil {
			t.Fatal(err)
		}
	}
	s := connect(t, ctx, c)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{src}}); res.Sent != entriesOf(modes)+1 || res.Failed != 0 {
		t.Fatalf("send: sent %d, failed %d; want %d (and tree itself), 0", res.Sent, res.Failed, entriesOf(modes))
	}
	out := filepath.Join(base, "restored")
	if res := restoreAll(t, ctx, s, "tree", out); res.Files != len(modes) || res.Failed != 0 {
		t.Fatalf("restore: %d files, %d failed; want %d, 0", res.Files, res.Failed, len(modes))
	}

	// A partial upload, so that tmp/ holds a temp file too.
	cid, err := store.ParseClientID(id.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	up, err := srv.Store.NewUpload(ctx, cid, "partial", 100, time.Now(), 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Discard(ctx)
	if _, err := up.WriteAt([]byte("some bytes"), 0); err != nil {
		t.Fatal(err)
	}
	if err := up.Checkpoint(ctx, nil); err != nil {
		t.Fatal(err)
	}

	// The server's data directory, while the server runs (so the
	// database's -wal and -shm and the lock file exist). cert.pem is the
	// one file allowed to be readable by others: it is the public
	// certificate (certs.LoadOrCreate documents 0644), and it sits in the
	// 0700 tls directory anyway.
	seen := auditModes(t, data, map[string]fs.FileMode{"tls/cert.pem": 0o644})
	logModes(t, "server data directory "+data, seen)
	for _, want := range []string{".", "qbackup.db", "qbackup.db-wal", "qbackup.db-shm", "qbackup.lock", "tls", "tls/key.pem", "tls/cert.pem", "tmp", "clients", "clients/" + id.ClientID} {
		if _, ok := seen[want]; !ok {
			t.Errorf("server data directory has no %s: the audit missed it", want)
		}
	}
	var stored, temps int
	for rel, m := range seen {
		if strings.HasPrefix(rel, "clients/"+id.ClientID+"/") && m.IsRegular() {
			stored++
		}
		if strings.HasPrefix(rel, "tmp/") && m.IsRegular() {
			temps++
		}
	}
	if stored != entriesOf(modes)+1 || temps != 1 {
		t.Errorf("server data directory holds %d stored files and %d temp files, want %d (a directory's version is an empty file too) and 1", stored, temps, entriesOf(modes)+1)
	}

	// The client's home: its key and its identity (client ID, pinned
	// certificate fingerprint).
	seen = auditModes(t, home, nil)
	logModes(t, "client home "+home, seen)
	for _, want := range []string{".", identityFile, keyFile} {
		if _, ok := seen[want]; !ok {
			t.Errorf("client home has no %s: the audit missed it", want)
		}
	}
	if len(seen) != 3 {
		t.Errorf("client home holds %d entries, want 3 (itself, %s, %s)", len(seen), identityFile, keyFile)
	}

	// Restored files and directories get the mode recorded at backup,
	// whatever the umask (that is the design: a restore gives back the
	// tree as it was).
	var lines []string
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Error(err)
			return nil
		}
		rel, _ := filepath.Rel(out, p)
		rel = filepath.ToSlash(rel)
		lines = append(lines, fi.Mode().String()+"  "+rel)
		switch {
		case fi.IsDir():
			if want := dirModes[rel]; fi.Mode().Perm() != want {
				t.Errorf("restored directory %s has mode %#o, want %#o as at backup", rel, fi.Mode().Perm(), want)
			}
		case fi.Mode().IsRegular():
			if want, ok := modes[rel]; !ok {
				t.Errorf("restore left %s, which was never sent", rel)
			} else if fi.Mode().Perm() != want {
				t.Errorf("restored %s has mode %#o, want %#o as at backup", rel, fi.Mode().Perm(), want)
			}
		default:
			t.Errorf("restore left %s, a %v", rel, fi.Mode().Type())
		}
		return nil
	})
	sort.Strings(lines)
	t.Logf("restored tree %s:\n  %s", out, strings.Join(lines, "\n  "))
}

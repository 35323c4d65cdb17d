//go:build linux

package quiccli

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
	"golang.org/x/sys/unix"
)

// TestMetadataChangeIsRecorded: a file whose content is unchanged but
// whose mode or extended attributes changed is not sent again, yet the
// new metadata is what a restore gives back.
func TestMetadataChangeIsRecorded(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	src := filepath.Join(t.TempDir(), "docs")
	path := filepath.Join(src, "report.pdf")
	writeRandom(t, path, 5*testChunk, 1)
	s := connect(t, ctx, c)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{src}}); res.Sent != 2 {
		t.Fatalf("first send: sent %d, want 2", res.Sent)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(path, "user.tag", []byte("reviewed"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	if err := os.Chmod(src, 0o750); err != nil {
		t.Fatal(err)
	}
	res := sendPaths(t, ctx, s, SendOptions{Paths: []string{src}})
	if res.Unchanged != 2 || res.Sent != 0 || res.Bytes != 0 {
		t.Errorf("send after chmod and setxattr: %d unchanged, %d sent, %d bytes; want 2 unchanged, nothing sent", res.Unchanged, res.Sent, res.Bytes)
	}
	out := filepath.Join(t.TempDir(), "out")
	restoreAll(t, ctx, s, "docs", out)
	fi, err := os.Stat(filepath.Join(out, "report.pdf"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(filepath.Join(out, "report.pdf"), "user.tag", buf)
	if fi.Mode().Perm() != 0o640 || err != nil || string(buf[:n]) != "reviewed" {
		t.Errorf("restored file: mode %#o, user.tag %q (%v); want 0640 and \"reviewed\"", fi.Mode().Perm(), buf[:max(n, 0)], err)
	}
	if di, err := os.Stat(out); err != nil || di.Mode().Perm() != 0o750 {
		t.Errorf("restored directory: %v (%v), want mode 0750", di.Mode(), err)
	}
}

// TestCLIByteNames: a directory holding a Latin-1 name among ordinary
// ones backs up whole (it once failed all 21 files); ls shows the name
// escaped on one line, and a restore takes the name as ls shows it or as
// the raw bytes.
func TestCLIByteNames(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	src := filepath.Join(t.TempDir(), "old")
	for i := range 19 {
		writeRandom(t, filepath.Join(src, "file-"+string(rune('a'+i))), 100+i, uint64(i))
	}
	latin := writeRandom(t, filepath.Join(src, "caf\xe9.txt"), 1234, 99)
	odd := writeRandom(t, filepath.Join(src, "two\nlines\\and a backslash"), 55, 98)
	r := u.ok("send", src)
	if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 22}) {
		t.Errorf("send: %+v, want 22 sent (21 files and their directory)", got)
	}
	if !strings.Contains(r.stdout, `old/caf\xe9.txt`) || !strings.Contains(r.stdout, `old/two\nlines\\and a backslash`) {
		t.Errorf("send does not show the names escaped:\n%s", r.stdout)
	}
	rows := parseLs(t, u.ok("ls", "old").stdout)
	var names []string
	for _, row := range rows {
		names = append(names, row.name)
	}
	for _, want := range []string{`old/caf\xe9.txt`, `old/two\nlines\\and a backslash`} {
		if !strings.Contains(strings.Join(names, "|"), want) {
			t.Errorf("ls does not list %s: %q", want, names)
		}
	}
	if rows := parseLs(t, u.ok("ls", `old/caf\xe9.txt`).stdout); len(rows) != 1 || rows[0].name != `old/caf\xe9.txt` {
		t.Errorf("ls of the name as shown: %+v", rows)
	}
	dir := t.TempDir()
	u.ok("restore", `old/caf\xe9.txt`, "-o", filepath.Join(dir, "shown"))
	assertSameFile(t, filepath.Join(dir, "shown"), latin)
	u.ok("restore", "old/caf\xe9.txt", "-o", filepath.Join(dir, "raw"))
	assertSameFile(t, filepath.Join(dir, "raw"), latin)
	u.ok("restore", "old", "-o", filepath.Join(dir, "tree"))
	assertSameFile(t, filepath.Join(dir, "tree", "two\nlines\\and a backslash"), odd)
}

// TestCLIInterrupt: Ctrl-C during a send exits 130, counts the file under
// way as interrupted and the one never begun apart from failures, and says
// that running the same command again resumes; which it does.
func TestCLIInterrupt(t *testing.T) {
	srv := startServer(t)
	p := startUDPProxy(t, srv.Addr, 5)
	p.SetRate(toServer, 2<<20) // 16 MiB take 8 s: the interrupt falls in the middle
	u := newCLIUser(t)
	u.ok("register", "--server", p.Addr(), "--name", "alice", "--fingerprint", srv.Fingerprint)
	src := filepath.Join(t.TempDir(), "big")
	writeRandom(t, filepath.Join(src, "a.bin"), 16<<20, 1)
	writeRandom(t, filepath.Join(src, "b.bin"), 16<<20, 2)
	ctx, interrupt := context.WithCancel(u.ctx)
	time.AfterFunc(time.Second, interrupt)
	r := runMain(t, ctx, nil, "--home", u.home, "--key-bits", "2048", "send", "--files", "1", src)
	msg := checkFailure(t, r, ExitInterrupted, "interrupted", "run the same command again to resume")
	t.Logf("interrupted: %s", msg)
	if got := parseSummary(t, r.stdout); got.interrupted != 1 || got.notStarted != 1 || got.failed != 0 {
		t.Errorf("summary %+v: want 1 interrupted, 1 not started, none failed", got)
	}
	p.SetRate(toServer, 0)
	r = u.ok("send", src)
	if !regexp.MustCompile(`(?m)^resumed v1 +big/a\.bin`).MatchString(r.stdout) {
		t.Errorf("the second send did not resume big/a.bin:\n%s", r.stdout)
	}
	assertSameTree(t, restoreTo(t, u, "big"), src)
}

// restoreTo restores name into a new directory and returns its path.
func restoreTo(t *testing.T, u *cliUser, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	u.ok("restore", name, "-o", out)
	return out
}

// TestCLIRestoreAsUser: a restore run by a user other than root sets no
// owner and cannot make devices: each device is skipped with one line
// naming it, the rest is restored, and the exit status (3) says that
// something was skipped. (As root, the test plays the other user through
// the two seams the kernel would answer for it.)
func TestCLIRestoreAsUser(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to make the device and the owner that are then not restored")
	}
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	src := filepath.Join(t.TempDir(), "dev")
	writeRandom(t, filepath.Join(src, "owned"), 100, 1)
	if err := os.Chown(filepath.Join(src, "owned"), 4321, 4321); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(src, "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(src, "pipe"), 0o600); err != nil {
		t.Fatal(err)
	}
	u.ok("send", src)

	root, mknod := isRoot, makeNode
	t.Cleanup(func() { isRoot, makeNode = root, mknod })
	isRoot = func() bool { return false }
	makeNode = func(dir *os.File, name string, kind proto.Kind, mode uint32, rdev uint64) error {
		if kind == proto.KindCharDev || kind == proto.KindBlock {
			return unix.EPERM // what the kernel tells a user without CAP_MKNOD
		}
		return mknod(dir, name, kind, mode, rdev)
	}
	out := filepath.Join(t.TempDir(), "out")
	r := u.run("restore", "dev", "-o", out)
	checkFailure(t, r, ExitIncomplete, "skipped")
	if n := strings.Count(r.stderr, "not restored: only root can make a character device"); n != 1 {
		t.Errorf("stderr names the device %d times, want once:\n%s", n, r.stderr)
	}
	if !strings.Contains(r.stdout, "3 restored, 0 identical, 0 failed, 1 skipped") {
		t.Errorf("summary does not count the device as skipped:\n%s", r.stdout)
	}
	if fi, err := os.Lstat(filepath.Join(out, "pipe")); err != nil || fi.Mode().Type() != os.ModeNamedPipe {
		t.Errorf("the FIFO was not made: %v %v", fi, err)
	}
	fi, err := os.Stat(filepath.Join(out, "owned"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid == 4321 {
		t.Errorf("a restore that is not root's set the owner")
	}
}

// TestFirstConnectionRetried: a send whose server cannot be reached yet
// waits and tries again, like after a lost connection, rather than give up
// at the first try.
func TestFirstConnectionRetried(t *testing.T) {
	x := startProxied(t, 9)
	x.c.dialHook = func(o *dialOptions) {
		o.Server = x.proxy.Addr()
		o.QUICConfig = func(q *quic.Config) { q.HandshakeIdleTimeout = 300 * time.Millisecond }
	}
	x.proxy.SetDrop(toServer, 1)                                         // the server is unreachable...
	time.AfterFunc(time.Second, func() { x.proxy.SetDrop(toServer, 0) }) // ...for a second
	path := filepath.Join(t.TempDir(), "f")
	data := writeRandom(t, path, 5000, 1)
	rep := &warnings{}
	res, err := x.c.SendResilient(x.ctx, "", "", SendOptions{Paths: []string{path}}, ReconnectOptions{Attempts: 5, MaxWait: time.Second}, rep)
	if err != nil || res.Sent != 1 {
		t.Fatalf("send: %+v, %v; want it sent once the server answers", res, err)
	}
	if !strings.Contains(rep.String(), "cannot reach the server") {
		t.Errorf("no warning about the first try:\n%s", rep.String())
	}
	assertRestores(t, x.ctx, connect(t, x.ctx, x.c), "f", data)
}

// TestCLIDamage is issue 14's damage story as a user meets it: one
// flipped byte in a stored file; qbackupd check (while the server runs)
// finds it; ls says DAMAGED; a restore says so at once, in words; the
// next send of the unchanged file uploads it again, which heals it.
func TestCLIDamage(t *testing.T) {
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	src := filepath.Join(t.TempDir(), "notes.txt")
	data := writeRandom(t, src, 300_000, 1)
	u.ok("send", src)

	var stored string
	filepath.WalkDir(filepath.Join(srv.Dir, "clients"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "notes.txt;1" {
			stored = p
		}
		return nil
	})
	f, err := os.OpenFile(stored, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0x5a}, 123_456); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var out, errOut bytes.Buffer
	if code := quicsrv.Main(u.ctx, []string{"check", "--data", srv.Dir}, &out, &errOut); code != 1 {
		t.Fatalf("qbackupd check: exit %d, want 1\n%s%s", code, out.String(), errOut.String())
	}
	t.Logf("qbackupd check:\n%s%s", out.String(), errOut.String())
	if rows := parseLs(t, u.ok("ls").stdout); len(rows) != 1 || rows[0].verified != "DAMAGED" {
		t.Errorf("ls after the check: %+v, want notes.txt DAMAGED", rows)
	}
	r := u.run("restore", "notes.txt", "-o", filepath.Join(t.TempDir(), "x"))
	checkFailure(t, r, ExitFailed, "damaged", "send the file again")
	if strings.Count(r.stdout, "FAILED") != 1 {
		t.Errorf("restore of a damaged version: want one FAILED line, at once:\n%s", r.stdout)
	}

	r = u.ok("send", src) // size and mtime unchanged: sent anyway, and it heals
	if !regexp.MustCompile(`(?m)^identical +notes\.txt`).MatchString(r.stdout) {
		t.Errorf("send after the damage does not heal the stored copy:\n%s", r.stdout)
	}
	if rows := parseLs(t, u.ok("ls").stdout); len(rows) != 1 || rows[0].verified != "yes" || rows[0].version != "1" {
		t.Errorf("ls after the heal: %+v, want version 1, verified", rows)
	}
	dest := filepath.Join(t.TempDir(), "healed")
	u.ok("restore", "notes.txt", "-o", dest)
	assertSameFile(t, dest, data)
}

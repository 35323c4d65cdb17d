//go:build linux

package quiccli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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

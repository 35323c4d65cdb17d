//go:build linux

package quiccli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

const (
	fullDiskEnv  = "QBACKUP_FULLDISK_MOUNT" // set in the child: where the tmpfs is
	fullDiskSize = 16 << 20
	tmpfsMagic   = 0x01021994   // statfs f_type of a tmpfs
	reportPrefix = "fulldisk: " // child log lines the parent passes on
)

// TestFullDisk runs a server whose data lives on a real, small file system
// (a 16 MiB tmpfs) and fills it: a file bigger than the room left, then
// many small files while SQLite's log needs room too. The client must get
// a clear error, the server must stay up, and nothing stored may be lost.
func TestFullDisk(t *testing.T) {
	onSmallTmpfs(t, "TestFullDisk", fullDiskSize, fullDiskChild)
}

// onSmallTmpfs runs child(t, mnt) in a process of its own with a tmpfs of
// size bytes mounted at mnt, for the test name (the test's own name).
//
// The mount needs a private mount namespace: the test runs its own binary
// again under "unshare -rm" (a user namespace that maps us to root, and a
// mount namespace), which mounts the tmpfs and runs the test, which calls
// child, so the mount never exists outside that process and goes away with
// it. Without unshare or the right to mount, the test is skipped.
func onSmallTmpfs(t *testing.T, name string, size int64, child func(t *testing.T, mnt string)) {
	if mnt := os.Getenv(fullDiskEnv); mnt != "" {
		child(t, mnt)
		return
	}
	skip := func(format string, args ...any) {
		t.Helper()
		msg := name + " skipped: " + fmt.Sprintf(format, args...)
		fmt.Fprintln(os.Stderr, msg) // visible without -v too
		t.Skip(msg)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		skip("no unshare(1) to make a private mount namespace for a small tmpfs: %v", err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	probe := exec.Command(unshare, "-rm", "sh", "-c", `mount -t tmpfs -o size=1m tmpfs "$1"`, "sh", mnt)
	if out, err := probe.CombinedOutput(); err != nil {
		skip("cannot mount a tmpfs in a private mount namespace (unshare -rm sh -c 'mount -t tmpfs ...': %v: %s)", err, bytes.TrimSpace(out))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, unshare, "-rm", "sh", "-c",
		fmt.Sprintf(`mount -t tmpfs -o size=%d,mode=0700 tmpfs "$1" || exit 97; shift; exec "$@"`, size),
		"sh", mnt, os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), fullDiskEnv+"="+mnt)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 97 {
		skip("mounting the tmpfs failed in the child although the probe worked:\n%s", out)
	}
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+name)) {
		var keep []string
		for line := range strings.Lines(string(out)) {
			if !strings.Contains(line, "level=DEBUG") {
				keep = append(keep, strings.TrimRight(line, "\n"))
			}
		}
		t.Fatalf("the child on a small tmpfs failed (%v) after %v:\n%s", err, time.Since(start).Round(time.Millisecond), strings.Join(keep, "\n"))
	}
	for line := range strings.Lines(string(out)) {
		if _, report, ok := strings.Cut(line, reportPrefix); ok {
			t.Log(strings.TrimRight(report, "\n"))
		}
	}
	t.Logf("child ran in %v", time.Since(start).Round(time.Millisecond))
}

// TestRestoreFullDisk restores onto a small file system (a 12 MiB tmpfs
// with 6 MiB taken) a tree that does not fit: files of 4 MiB and 4.5 MiB,
// and small ones. Each large file would fit alone, the two together
// would not. The restore writes the one that fits rather than fail both
// half-way, stops with one message that says to run it again, and leaves
// no temporary file; once room is made, the same command finishes,
// skipping what is there already.
func TestRestoreFullDisk(t *testing.T) {
	onSmallTmpfs(t, "TestRestoreFullDisk", 12<<20, func(t *testing.T, mnt string) {
		report := func(format string, args ...any) { t.Logf(reportPrefix+format, args...) }
		srv := startServer(t)
		u := newCLIUser(t)
		u.register(srv, "alice")
		src := filepath.Join(t.TempDir(), "tree")
		want := map[string][]byte{
			"tree/a-large": writeRandom(t, filepath.Join(src, "a-large"), 4<<20, 1),
			"tree/b-large": writeRandom(t, filepath.Join(src, "b-large"), 9<<19, 2),
		}
		for i := range 5 {
			name := fmt.Sprintf("small-%d", i)
			want["tree/"+name] = writeRandom(t, filepath.Join(src, name), 10000, uint64(10+i))
		}
		u.ok("send", src)
		filler := filepath.Join(mnt, "filler")
		writeRandom(t, filler, 6<<20, 3)
		out := filepath.Join(mnt, "tree")
		r := u.run("restore", "tree", "-o", out)
		msg := checkFailure(t, r, ExitFailed, "out of disk space", "run the same command again")
		report("restore of 8.5 MiB onto 6 MiB free: exit %d, %q; %q", r.code, msg, lastLine(r.stdout))
		var got []string
		filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if strings.HasPrefix(d.Name(), ".qbackup-") {
					t.Errorf("a temporary file is left: %s", p)
				}
				rel, _ := filepath.Rel(mnt, p)
				got = append(got, filepath.ToSlash(rel))
			}
			return nil
		})
		sort.Strings(got)
		report("on the tmpfs after the first run: %v", got)
		// Whatever is there is whole and right, and one large file, which
		// fits alone, is there: two written at once would both have failed.
		large := 0
		for _, name := range got {
			if b, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(b, want[name]) {
				t.Errorf("%s after the first run: %d bytes, not the %d stored (%v)", name, len(b), len(want[name]), err)
			}
			if strings.HasSuffix(name, "-large") {
				large++
			}
		}
		if large != 1 {
			t.Errorf("after the first run the tmpfs holds %d of the large files, want the 1 that fits", large)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		r = u.ok("restore", "tree", "-o", out)
		report("again with room made: %q", lastLine(r.stdout))
		if !strings.Contains(r.stdout, "identical") {
			t.Errorf("the second run found nothing identical:\n%s", r.stdout)
		}
		assertSameTree(t, out, src)
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// doneRecorder is a Reporter that keeps how each file ended.
type doneRecorder struct {
	nopReporter
	mu   sync.Mutex
	errs map[string]error // nil: stored or unchanged
}

func (r *doneRecorder) File(name string, _ int64) FileProgress { return &doneFile{r: r, name: name} }

type doneFile struct {
	nopFile
	r    *doneRecorder
	name string
}

func (f *doneFile) Done(_ string, err error) {
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if f.r.errs == nil {
		f.r.errs = map[string]error{}
	}
	f.r.errs[f.name] = err
}

// fullDiskChild is the half of TestFullDisk that runs with the tmpfs
// mounted at mnt.
func fullDiskChild(t *testing.T, mnt string) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil || uint32(st.Type) != tmpfsMagic || int64(st.Blocks)*int64(st.Bsize) > 4*fullDiskSize {
		t.Fatalf("%s is not the small tmpfs TestFullDisk mounts (statfs type %#x, %d blocks of %d, %v); refusing to fill it", mnt, st.Type, st.Blocks, st.Bsize, err)
	}
	began := time.Now()
	report := func(format string, args ...any) {
		t.Helper()
		t.Logf(reportPrefix+"[%.1fs] "+format, append([]any{time.Since(began).Seconds()}, args...)...)
	}
	free := func() int64 {
		t.Helper()
		var st syscall.Statfs_t
		if err := syscall.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * int64(st.Bsize)
	}
	// fill writes a file of zeros at path until only leave bytes are
	// free, or, with leave 0, until the file system is full.
	fill := func(path string, leave int64) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 64<<10)
		for leave == 0 || free() > leave {
			n := len(buf)
			if leave > 0 {
				n = int(min(int64(n), free()-leave))
			}
			if _, err := f.Write(buf[:n]); err != nil {
				if leave == 0 && errors.Is(err, syscall.ENOSPC) {
					return
				}
				t.Fatalf("filling %s: %v", path, err)
			}
		}
	}
	isNoSpace := func(err error) bool { return errors.Is(err, &proto.Error{Code: proto.CodeNoSpace}) }

	ctx := testContext(t)
	srv := srvtest.StartIn(t, filepath.Join(mnt, "data"), func(s *quicsrv.Server) { s.ChunkSize = testChunk })
	c := newClient(t) // client side, sources and restores are not on the tmpfs
	id := register(t, ctx, c, srv, "alice")
	cid, err := store.ParseClientID(id.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()

	// checkStored checks that the server lists exactly want, that each
	// file under the top-level names in restore (all with "*") restores
	// byte for byte, that the database is sound and that no temp file is
	// left over. It returns how many upload rows the store still has (each
	// without a temp file then).
	checkStored := func(label string, s *Session, want map[string][]byte, restore ...string) (rows int) {
		t.Helper()
		entries, err := s.List(ctx, "", false)
		if err != nil {
			t.Fatalf("%s: list: %v", label, err)
		}
		listed := map[string]bool{}
		for _, e := range entries {
			if e.Kind == proto.KindDir {
				continue // a directory the files are in: the files say enough
			}
			listed[e.Name] = true
			data, ok := want[e.Name]
			switch {
			case !ok:
				t.Errorf("%s: ls lists %q, which was never stored", label, e.Name)
			case e.Size != uint64(len(data)) || e.SHA256 != sha256.Sum256(data) || !e.Verified:
				t.Errorf("%s: ls %q: size %d, verified %v, another SHA-256; want %d bytes as sent", label, e.Name, e.Size, e.Verified, len(data))
			}
		}
		for name := range want {
			if !listed[name] {
				t.Errorf("%s: %q was stored but is not listed", label, name)
			}
		}
		tops := map[string]bool{}
		for _, top := range restore {
			tops[top] = true
		}
		if tops["*"] {
			tops = map[string]bool{}
			for name := range want {
				top, _, _ := strings.Cut(name, "/")
				tops[top] = true
			}
		}
		out, n := t.TempDir(), 0
		for top := range tops { // a/b restores to out/a/b, c to out/c
			restoreAll(t, ctx, s, top, filepath.Join(out, top))
		}
		for name, data := range want {
			if top, _, _ := strings.Cut(name, "/"); !tops[top] {
				continue
			}
			n++
			if got, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(name))); err != nil || !bytes.Equal(got, data) {
				t.Errorf("%s: restored %q: %d bytes (%v), want the %d bytes sent", label, name, len(got), err, len(data))
			}
		}
		restored := fmt.Sprintf("%d of them restored and compared", n)
		integrity := "integrity_check ok"
		if err := srv.Store.IntegrityCheck(ctx); err != nil {
			t.Errorf("%s: %v", label, err)
			integrity = err.Error()
		}
		assertNoTempFiles(t, srv)
		ents, _ := os.ReadDir(filepath.Join(srv.Dir, "tmp"))
		rows, size, err := srv.Store.PartialUploads(ctx)
		if err != nil {
			t.Errorf("%s: %v", label, err)
		}
		report("%s: %d files listed, %s; %s; tmp/ holds %d entries; %d upload rows (%d bytes declared); %d KiB free",
			label, len(entries), restored, integrity, len(ents), rows, size, free()>>10)
		return rows
	}
	// restart restarts the server and checks what its store cleaned up.
	restart := func(label string, want store.Recovery) {
		t.Helper()
		srv.Restart()
		if rec := srv.Store.Recovered(); rec != want {
			t.Errorf("%s: the restarted store cleaned up %+v, want %+v", label, rec, want)
		} else {
			report("%s: the store cleaned up %+v", label, rec)
		}
	}

	// 1. A few files while there is room.
	want := map[string][]byte{}
	for i, size := range []int{0, 1, 10000, 3*testChunk + 7, 1<<20 + 123} {
		name := fmt.Sprintf("early/f%d", i)
		want[name] = writeRandom(t, filepath.Join(src, filepath.FromSlash(name)), size, uint64(i+1))
	}
	s := connect(t, ctx, c)
	if res := sendPaths(t, ctx, s, SendOptions{Paths: []string{filepath.Join(src, "early")}}); res.Sent != entriesOf(want) || res.Failed != 0 {
		t.Fatalf("first send: sent %d, failed %d; want %d, 0", res.Sent, res.Failed, entriesOf(want))
	}
	s.Close()
	report("stored %d files; %d KiB of %d KiB free", len(want), free()>>10, fullDiskSize>>10)

	// 2. Leave 512 KiB and send 2 MiB, with the command line a user runs.
	filler := filepath.Join(mnt, "filler")
	fill(filler, 512<<10)
	room := free()
	report("filler written: %d KiB free", room>>10)
	hugePath := filepath.Join(src, "huge.bin")
	huge := writeRandom(t, hugePath, 2<<20, 99)
	r := runMain(t, ctx, nil, "--home", c.Home, "send", hugePath)
	line := checkFailure(t, r, 1, "no space left on server", "free space")
	if got := parseSummary(t, r.stdout); got != (sendCounts{failed: 1}) {
		t.Errorf("send of the 2 MiB file: %+v, want 1 failed", got)
	}
	report("send of a 2 MiB file with %d KiB free: exit %d, %q", room>>10, r.code, line)
	s = connect(t, ctx, c) // the server is up and takes new sessions
	if rows := checkStored("after the failed send", s, want, "*"); rows != 0 {
		t.Errorf("after the failed send: %d upload rows left, want none", rows)
	}

	// Room again: the same file goes through.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r = runMain(t, ctx, nil, "--home", c.Home, "send", hugePath)
	if r.code != 0 || parseSummary(t, r.stdout) != (sendCounts{sent: 1}) {
		t.Fatalf("send after freeing space: exit %d, want 0 and 1 sent:\n%v", r.code, r)
	}
	want["huge.bin"] = huge
	if rows := checkStored("after freeing space and sending it again", s, want, "huge.bin"); rows != 0 {
		t.Errorf("after freeing space: %d upload rows left, want none", rows)
	}
	s.Close()

	// 3. Many small files while the disk fills: SQLite needs room too (its
	// write-ahead log grows with every upload row and version row), and
	// empty files need nothing else. A restart first checkpoints and
	// removes the log, so that it has to grow on the full disk.
	restart("restart before the small files", store.Recovery{})
	s = connect(t, ctx, c)
	filler = filepath.Join(mnt, "filler2")
	const (
		nSmall    = 240
		smallRoom = 512 << 10
	)
	fill(filler, smallRoom)
	report("filler written: %d KiB free", free()>>10)
	small := map[string][]byte{}
	for i := range nSmall {
		// 40 files of 16 KiB, more than the room left, so the disk is
		// full before the 200 empty files, whose rows outgrow what the
		// database and its log already hold.
		size := 0
		if i%6 == 1 {
			size = 16<<10 + i
		}
		dir := "small-data"
		if size == 0 {
			dir = "small-empty"
		}
		name := fmt.Sprintf("%s/%03d", dir, i)
		small[name] = writeRandom(t, filepath.Join(src, filepath.FromSlash(name)), size, uint64(1000+i))
	}
	// The files with data first, then the empty ones, which need room in
	// SQLite only: by then the disk is full, whatever order the many
	// small files in flight happened to take.
	// Whatever room the files with data left (how much depends on which
	// of them were in flight when the disk filled), the rest is filled
	// before the empty ones, so that their rows must find room SQLite
	// does not have.
	rec := &doneRecorder{}
	res := s.Send(ctx, SendOptions{Paths: []string{filepath.Join(src, "small-data")}}, rec)
	fillerEmpty := filepath.Join(mnt, "filler2-empty")
	fill(fillerEmpty, 0)
	report("after the files with data, filler written: %d KiB free", free()>>10)
	res2 := s.Send(ctx, SendOptions{Paths: []string{filepath.Join(src, "small-empty")}}, rec)
	res.Sent += res2.Sent
	res.Failed += res2.Failed
	if res.FirstErr == nil {
		res.FirstErr = res2.FirstErr
	}
	var stored, failed, storedEmpty, failedEmpty int
	var other []string
	for name, data := range small {
		err, ok := rec.errs[name]
		switch {
		case !ok:
			t.Errorf("small files: %s has no outcome", name)
		case err == nil:
			stored++
			want[name] = data
			if len(data) == 0 {
				storedEmpty++
			}
		case isNoSpace(err):
			failed++
			if len(data) == 0 {
				failedEmpty++
			}
		default:
			other = append(other, fmt.Sprintf("%s: %v", name, err))
		}
	}
	for name, err := range rec.errs { // the directories the small files are in
		if _, ok := small[name]; ok {
			continue
		}
		switch {
		case err == nil:
			stored++
		case isNoSpace(err):
			failed++
		default:
			other = append(other, fmt.Sprintf("%s: %v", name, err))
		}
	}
	sort.Strings(other)
	if len(other) > 0 {
		t.Errorf("small files: %d failed otherwise than with %v:\n%s", len(other), proto.CodeNoSpace, strings.Join(other, "\n"))
	}
	if res.Sent != stored || res.Failed != failed+len(other) {
		t.Errorf("small files: send counts %d sent, %d failed; the reporter saw %d stored, %d failed", res.Sent, res.Failed, stored, failed+len(other))
	}
	if failedEmpty == 0 {
		t.Errorf("small files: no empty file failed, so SQLite never ran out of space: the test did not fill the disk (%d stored, %d failed)", stored, failed)
	}
	report("%d small files with %d KiB free: %d stored (%d empty), %d refused with %q (%d empty: only SQLite needed room for those), %d other errors; first error: %v",
		nSmall, smallRoom>>10, stored, storedEmpty, failed, proto.CodeNoSpace.String(), failedEmpty, len(other), res.FirstErr)
	// No temp file is left, but an upload that failed for want of space
	// may leave its row: Discard removes the temp file, then cannot delete
	// the row while SQLite has no room for its log. The store documents
	// that the next Open (or PurgeUploads, or a resend of that file)
	// removes such rows; the restart below checks it.
	stale := checkStored("after the small files (same session, disk still full)", s, want, "*")

	// With the disk completely full, what the store itself says when
	// SQLite cannot write.
	rest := filepath.Join(mnt, "filler3")
	fill(rest, 0)
	// An empty upload needs no data blocks: its temp file may be made
	// (NewUpload writes nothing to the database), but its commit needs
	// SQLite to write. SQLite may still find room in pages its log already
	// holds, so the commit may also succeed; then the version must be
	// there like any other. (That SQLite's own failures are ErrNoSpace is
	// shown by the empty small files above, failedEmpty.)
	up, err := srv.Store.NewUpload(ctx, cid, "probe", 0, time.Now(), 0o600)
	if err == nil {
		crc, sha, _ := proto.FileChecksums(bytes.NewReader(nil), 0)
		if _, _, err = up.Commit(ctx, crc, sha); err == nil {
			want["probe"] = nil
		} else {
			up.Discard(ctx)
		}
	}
	if err != nil && !errors.Is(err, store.ErrNoSpace) {
		t.Errorf("empty upload on a full disk: %v, want store.ErrNoSpace or success", err)
	}
	report("NewUpload and Commit of an empty file with 0 bytes free: %v", err)
	if err := srv.Store.IntegrityCheck(ctx); err != nil {
		t.Errorf("integrity check with the disk full: %v", err)
	}

	// Room again. A restart removes the rows left behind and nothing else;
	// then what failed goes through and what was stored is unchanged.
	for _, p := range []string{filler, fillerEmpty, rest} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	restart("restart after freeing space", store.Recovery{UploadRows: stale})
	s = connect(t, ctx, c)
	res = sendPaths(t, ctx, s, SendOptions{Paths: []string{filepath.Join(src, "small-data"), filepath.Join(src, "small-empty")}})
	if res.Sent != failed+len(other) || res.Unchanged != stored || res.Failed != 0 {
		t.Errorf("small files again after freeing space: %d sent, %d unchanged, %d failed; want %d, %d, 0", res.Sent, res.Unchanged, res.Failed, failed+len(other), stored)
	}
	report("small files sent again: %d sent, %d unchanged", res.Sent, res.Unchanged)
	for name, data := range small {
		want[name] = data
	}
	if rows := checkStored("after sending the small files again", s, want, "small-data", "small-empty"); rows != 0 {
		t.Errorf("after sending the small files again: %d upload rows left, want none", rows)
	}
}

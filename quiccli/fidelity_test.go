//go:build linux

package quiccli

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"golang.org/x/sys/unix"
)

// entryInfo is what a backup must reproduce of one entry.
type entryInfo struct {
	kind   proto.Kind
	mode   fs.FileMode // permission, setuid, setgid, sticky
	uid    uint32
	gid    uint32
	mtime  int64
	size   int64
	sha    [32]byte // a file's content
	target string   // a link's target
	rdev   uint64
	xattrs string // "name=value;..." sorted
	link   string // for a file with several links: the first name of its inode
	blocks int64  // allocated 512-byte blocks of a file
}

// snapshotTree describes every entry under root, by slash-separated path
// relative to it ("." for root itself), without following links.
func snapshotTree(t *testing.T, root string) map[string]entryInfo {
	t.Helper()
	out := map[string]entryInfo{}
	inodes := map[uint64]string{}
	var names []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	sort.Strings(names)
	for _, p := range names {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		k, _ := kindOf(fi.Mode())
		e := entryInfo{kind: k, mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky),
			uid: st.Uid, gid: st.Gid, mtime: fi.ModTime().UnixNano()}
		switch k {
		case proto.KindFile:
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			e.size, e.sha, e.blocks = int64(len(b)), sha256.Sum256(b), st.Blocks
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					e.link = first
				} else {
					inodes[st.Ino], e.link = rel, rel
				}
			}
		case proto.KindSymlink:
			e.target, _ = os.Readlink(p)
			e.mode = 0 // meaningless on Linux
		case proto.KindCharDev, proto.KindBlock:
			e.rdev = uint64(st.Rdev)
		case proto.KindDir:
			e.mtime = fi.ModTime().UnixNano()
		}
		xs, err := xattrs(func(buf []byte) (int, error) { return unix.Llistxattr(p, buf) },
			func(name string, buf []byte) (int, error) { return unix.Lgetxattr(p, name, buf) })
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		var parts []string
		for _, x := range xs {
			parts = append(parts, x.Name+"="+fmt.Sprintf("%x", x.Value))
		}
		e.xattrs = strings.Join(parts, ";")
		out[rel] = e
	}
	return out
}

// posixACL is the value of a system.posix_acl_access attribute giving
// uid 4242 read access beside the owner's rw, group r and no other.
func posixACL() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	entry := func(tag, perm uint16, id uint32) {
		b = binary.LittleEndian.AppendUint16(b, tag)
		b = binary.LittleEndian.AppendUint16(b, perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	entry(0x01, 6, ^uint32(0)) // ACL_USER_OBJ rw-
	entry(0x02, 4, 4242)       // ACL_USER 4242 r--
	entry(0x04, 4, ^uint32(0)) // ACL_GROUP_OBJ r--
	entry(0x10, 4, ^uint32(0)) // ACL_MASK r--
	entry(0x20, 0, ^uint32(0)) // ACL_OTHER ---
	return b
}

// makeFidelityTree builds a tree with every kind of entry and metadata a
// Linux home directory or /usr can hold, and returns what it could not
// make here (for the log).
func makeFidelityTree(t *testing.T, root string) (missing []string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(name string) string { return filepath.Join(root, filepath.FromSlash(name)) }
	must(os.MkdirAll(root, 0o755))
	file := func(name string, size int, mode fs.FileMode) {
		writeRandom(t, p(name), size, uint64(len(name)+size))
		must(os.Chmod(p(name), mode))
	}
	file("plain.txt", 5000, 0o644)
	file("caf\xe9.txt", 10, 0o600)            // Latin-1
	file(`back\slash`, 11, 0o600)             // legal on Linux
	file("new\nline", 12, 0o600)              // legal on Linux
	file("ctl\x01\x7f", 13, 0o600)            // legal on Linux
	file(strings.Repeat("n", 255), 14, 0o600) // NAME_MAX
	file(strings.Repeat("日", 85), 15, 0o600)  // 255 bytes of CJK
	file("exec-setuid", 100, 0o4755)
	file("exec-setgid", 100, 0o2755)
	file("read-only", testChunk+3, 0o444)
	must(os.Mkdir(p("empty-dir"), 0o750))
	must(os.Mkdir(p("sticky"), 0o1777))
	must(os.Mkdir(p("ro-dir"), 0o755))
	file("ro-dir/inside", 20, 0o644)
	must(os.Chmod(p("ro-dir"), 0o555))
	must(os.Mkdir(p("closed"), 0o755))
	file("closed/secret", 30, 0o600)
	must(os.Chmod(p("closed"), 0))
	must(os.Symlink("plain.txt", p("link-relative")))
	must(os.Symlink("/etc/passwd", p("link-absolute"))) // stored, never followed
	must(os.Symlink("nowhere/at/all", p("link-dangling")))
	must(os.MkdirAll(p("sub"), 0o755))
	file("hard-a", 3*testChunk, 0o640)
	must(os.Link(p("hard-a"), p("sub/hard-b")))
	// A sparse image: 8 MiB with 4 KiB of data at 1 MiB and 4 KiB at 5 MiB
	// and 6 KiB at its very end.
	f, err := os.Create(p("sparse.img"))
	must(err)
	must(f.Truncate(8 << 20))
	for _, off := range []int64{1 << 20, 5 << 20, 8<<20 - 6<<10} {
		_, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 4<<10), off)
		must(err)
	}
	must(f.Close())
	must(unix.Mkfifo(p("fifo"), 0o640))
	must(unix.Mknod(p("socket"), unix.S_IFSOCK|0o600, 0))
	if err := unix.Setxattr(p("plain.txt"), "user.comment", []byte("kept with the file"), 0); err != nil {
		missing = append(missing, fmt.Sprintf("user xattrs (%v)", err))
	} else {
		must(unix.Setxattr(p("sub"), "user.dir-note", []byte{0, 1, 2, 0xff}, 0))
		must(unix.Setxattr(p("plain.txt"), "user.empty", nil, 0))
	}
	file("acl-file", 40, 0o640)
	if err := unix.Setxattr(p("acl-file"), "system.posix_acl_access", posixACL(), 0); err != nil {
		missing = append(missing, fmt.Sprintf("POSIX ACLs (%v)", err))
	}
	if isRoot() {
		must(unix.Mknod(p("null-dev"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(unix.Mknod(p("block-dev"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 200))))
		file("owned", 50, 0o640)
		must(os.Lchown(p("owned"), 1234, 5678))
		must(os.Lchown(p("link-relative"), 2345, 6789))
		must(os.Chown(p("sub"), 3456, 7890))
		must(unix.Setxattr(p("owned"), "trusted.qbackup-test", []byte("root only"), 0))
	} else {
		missing = append(missing, "devices, owners and trusted xattrs (not root)")
	}
	// Times last, deepest first, since making entries changes their
	// directory's.
	when := time.Date(2019, 3, 4, 5, 6, 7, 123456789, time.UTC)
	var all []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		all = append(all, path)
		return nil
	})
	for i := len(all) - 1; i >= 0; i-- {
		ts := unix.NsecToTimespec(when.Add(time.Duration(i) * time.Minute).UnixNano())
		must(unix.UtimesNanoAt(unix.AT_FDCWD, all[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
	return missing
}

// TestTreeFidelity backs up a tree with every kind of entry and metadata
// and restores it, then compares the two entry by entry: names, kinds,
// modes, owners, times, sizes, contents, link targets, device numbers,
// extended attributes (with a POSIX ACL), hard-link identity and
// allocated blocks. A second restore over the first finds everything
// identical and fetches nothing.
func TestTreeFidelity(t *testing.T) {
	ctx := testContext(t)
	srv := startServer(t)
	c := newClient(t)
	register(t, ctx, c, srv, "alice")
	src := filepath.Join(t.TempDir(), "tree")
	if missing := makeFidelityTree(t, src); len(missing) > 0 {
		t.Logf("not tested here: %s", strings.Join(missing, "; "))
	}
	before := snapshotTree(t, src)
	s := connect(t, ctx, c)
	res := sendPaths(t, ctx, s, SendOptions{Paths: []string{src}})
	if res.Sent != len(before) || res.Failed != 0 || res.Incomplete != 0 || res.Changed != 0 {
		t.Fatalf("send: %d sent, %d failed, %d incomplete, %d changed; want %d, 0, 0, 0 (%v)", res.Sent, res.Failed, res.Incomplete, res.Changed, len(before), res.FirstErr)
	}
	if after := snapshotTree(t, src); !equalTrees(t, "the source after the send", after, before) {
		t.Fatal("the send changed the source")
	}

	out := filepath.Join(t.TempDir(), "restored")
	rres, err := s.Restore(ctx, RestoreOptions{Name: "tree", Output: out}, nopReporter{})
	if err != nil {
		t.Fatal(err)
	}
	if rres.Restored != len(before) || rres.Failed+rres.Skipped+rres.Incomplete+rres.NotStarted != 0 {
		t.Errorf("restore: %+v; want %d restored and nothing else", rres, len(before))
	}
	got := snapshotTree(t, out)
	equalTrees(t, "the restored tree", got, before)
	if target, _ := os.Readlink(filepath.Join(out, "link-absolute")); target != "/etc/passwd" {
		t.Errorf("link-absolute points to %q", target)
	}

	// Again, over itself: nothing to fetch, nothing changed.
	rres, err = s.Restore(ctx, RestoreOptions{Name: "tree", Output: out}, nopReporter{})
	if err != nil {
		t.Fatal(err)
	}
	if rres.Identical != len(before) || rres.Restored != 0 || rres.Received != 0 || rres.Failed+rres.Skipped != 0 {
		t.Errorf("restore over the restored tree: %+v; want %d identical and no byte received", rres, len(before))
	}
	equalTrees(t, "the tree restored twice", snapshotTree(t, out), before)
}

// equalTrees reports, entry by entry, how got differs from want.
func equalTrees(t *testing.T, what string, got, want map[string]entryInfo) bool {
	t.Helper()
	ok := true
	for name, w := range want {
		g, found := got[name]
		switch {
		case !found:
			t.Errorf("%s: %q is missing", what, name)
			ok = false
		case g != w:
			t.Errorf("%s: %q is\n  %+v\nwant\n  %+v", what, name, g, w)
			ok = false
		}
	}
	for name := range got {
		if _, found := want[name]; !found {
			t.Errorf("%s: %q was never there", what, name)
			ok = false
		}
	}
	return ok
}

package quiccli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/qbackup/qbackup/proto"
	"golang.org/x/sys/unix"
)

// readMeta reads what a backup records of an entry besides its content:
// owner, extended attributes (POSIX ACLs among them), device number,
// hard-link identity and holes. f is the entry opened for reading (a
// regular file), or nil: then the attributes are read by path, without
// following a symbolic link. What could not be read is said in warnings;
// the entry is stored without it.
func readMeta(path string, f *os.File, fi fs.FileInfo) (m proto.Meta, warnings []string) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return m, nil
	}
	m.HasOwner = true
	m.UID, m.GID = st.Uid, st.Gid
	m.User, m.Group = ownerNames(st.Uid, st.Gid)
	if fi.Mode()&fs.ModeDevice != 0 {
		m.Rdev = uint64(st.Rdev)
	}
	if fi.Mode().IsRegular() && st.Nlink > 1 {
		m.Dev, m.Inode = uint64(st.Dev), uint64(st.Ino)
	}
	var err error
	if f != nil {
		m.Xattrs, err = xattrs(func(buf []byte) (int, error) { return unix.Flistxattr(int(f.Fd()), buf) },
			func(name string, buf []byte) (int, error) { return unix.Fgetxattr(int(f.Fd()), name, buf) })
	} else {
		m.Xattrs, err = xattrs(func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) },
			func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) })
	}
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("extended attributes not backed up: %v", err))
	}
	if f != nil && st.Blocks*512 < st.Size {
		m.Holes = holes(f, st.Size)
	}
	return m, append(warnings, fitMeta(&m)...)
}

// xattrs reads every extended attribute with list and get (the f, l or
// plain variants of listxattr(2) and getxattr(2)), sorted by name. A file
// system without them has none.
func xattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]proto.Xattr, error) {
	names, err := grow(list)
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []proto.Xattr
	for _, name := range strings.Split(strings.TrimSuffix(string(names), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v, err := grow(func(buf []byte) (int, error) { return get(name, buf) })
		if errors.Is(err, unix.ENODATA) {
			continue // removed since the list was read
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, proto.Xattr{Name: name, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// grow calls an xattr call that fills buf, with a buffer as large as the
// call first says it needs, again if the value grew meanwhile.
func grow(call func([]byte) (int, error)) ([]byte, error) {
	for range 8 {
		n, err := call(nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return []byte{}, nil
		}
		buf := make([]byte, n)
		n, err = call(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, errors.New("it keeps changing while read")
}

// holes returns the ranges of f with no data (SEEK_HOLE), at most
// maxHoles of them, or nil where the file system cannot say.
func holes(f *os.File, size int64) []proto.Range {
	fd := int(f.Fd())
	var out []proto.Range
	for off := int64(0); off < size && len(out) < maxHoles; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // a hole to the end
		} else if err != nil {
			return nil
		}
		if data > off {
			out = append(out, proto.Range{Off: uint64(off), Len: uint64(min(data, size) - off)})
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil
		}
		off = hole
	}
	return out
}

// isRoot reports whether this process may set owners (a variable, for
// tests of a restore run by another user).
var isRoot = func() bool { return os.Geteuid() == 0 }

// setOwner sets the owner recorded in m, by number, on f (or, with f
// nil, on the entry name in dir, not following a symbolic link). Only
// root can, so for anyone else it does nothing.
func setOwner(dir *os.File, name string, f *os.File, m *proto.Meta) error {
	if !m.HasOwner || !isRoot() {
		return nil
	}
	if f != nil {
		return f.Chown(int(m.UID), int(m.GID))
	}
	return unix.Fchownat(int(dir.Fd()), name, int(m.UID), int(m.GID), unix.AT_SYMLINK_NOFOLLOW)
}

// sameOwner reports whether fi has the owner m records, or the process
// could not set it anyway (it is not root).
func sameOwner(fi fs.FileInfo, m *proto.Meta) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !m.HasOwner || !isRoot() || !ok || (st.Uid == m.UID && st.Gid == m.GID)
}

// setXattrs sets the extended attributes in m on f (or, with f nil, on
// the entry name in dir, not following a symbolic link). It returns the
// names of those the file system or the process's rights refused.
func setXattrs(dir *os.File, name string, f *os.File, m *proto.Meta) (refused []string, err error) {
	for _, x := range m.Xattrs {
		var err error
		if f != nil {
			err = unix.Fsetxattr(int(f.Fd()), x.Name, x.Value, 0)
		} else {
			// No lsetxattrat(2) before Linux 6.13: the path through the
			// held directory's descriptor stays inside it.
			err = unix.Lsetxattr(fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), name), x.Name, x.Value, 0)
		}
		switch {
		case err == nil:
		case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP):
			refused = append(refused, x.Name)
		default:
			return refused, fmt.Errorf("setting extended attribute %s: %w", x.Name, err)
		}
	}
	return refused, nil
}

// setTimes sets the modification (and access) time of the entry name in
// dir, without following a symbolic link.
func setTimes(dir *os.File, name string, mtime time.Time) error {
	ts := unix.NsecToTimespec(mtime.UnixNano())
	return unix.UtimesNanoAt(int(dir.Fd()), name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// chmodAt sets the mode of the entry name in dir (not a symbolic link).
func chmodAt(dir *os.File, name string, mode uint32) error {
	return unix.Fchmodat(int(dir.Fd()), name, mode&proto.ModeMask, 0)
}

// makeNode creates a FIFO, socket or device name in dir (a variable, for
// tests of a restore run by another user).
var makeNode = func(dir *os.File, name string, kind proto.Kind, mode uint32, rdev uint64) error {
	t := map[proto.Kind]uint32{proto.KindFIFO: unix.S_IFIFO, proto.KindSocket: unix.S_IFSOCK,
		proto.KindCharDev: unix.S_IFCHR, proto.KindBlock: unix.S_IFBLK}[kind]
	return unix.Mknodat(int(dir.Fd()), name, t|(mode&0o777), int(rdev))
}

// reserve allocates size bytes for f, so that a restore that cannot fit
// fails before it moves a byte rather than half-way. A file system that
// cannot allocate ahead is left to fail as it writes.
func reserve(f *os.File, size int64) error {
	if size == 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		return nil
	}
	return err
}

// punchHoles deallocates what a restored sparse file holds within its
// recorded holes (the parts of holes smaller than a chunk, which the
// restore wrote as zeros), where it reads back as zeros only: only data
// extents are read, so a large hole costs nothing. A file system that
// cannot punch is left as it is.
func punchHoles(f *os.File, hs []proto.Range) error {
	fd := int(f.Fd())
	buf := make([]byte, 64<<10)
	for _, h := range hs {
		end := int64(h.Off + h.Len)
		for off := int64(h.Off); off < end; {
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
				break
			}
			if err != nil {
				return nil // the file system cannot say where data is
			}
			next, err := unix.Seek(fd, data, unix.SEEK_HOLE)
			if err != nil {
				return nil
			}
			next = min(next, end)
			zero, err := zeros(f, buf, data, next)
			if err != nil {
				return err
			}
			if zero {
				err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, data, next-data)
				if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
					return nil
				}
				if err != nil {
					return err
				}
			}
			off = next
		}
	}
	return nil
}

// zeros reports whether [off, end) of f reads as zeros.
func zeros(f *os.File, buf []byte, off, end int64) (bool, error) {
	for off < end {
		n := int(min(int64(len(buf)), end-off))
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return false, err
		}
		for _, c := range buf[:n] {
			if c != 0 {
				return false, nil
			}
		}
		off += int64(n)
	}
	return true, nil
}

// The hot path of a restore works on directories held open (restoreRun's
// heldDirs), by single names within them: one openat per directory rather
// than a walk from the root for every call, and a name of one component,
// never followed if it is a symbolic link, cannot lead elsewhere.

// lstatAt reports the kind and size of name in dir, not following a link.
func lstatAt(dir *os.File, name string) (kind proto.Kind, size int64, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, 0, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		kind = proto.KindFile
	case unix.S_IFDIR:
		kind = proto.KindDir
	case unix.S_IFLNK:
		kind = proto.KindSymlink
	case unix.S_IFIFO:
		kind = proto.KindFIFO
	case unix.S_IFSOCK:
		kind = proto.KindSocket
	case unix.S_IFCHR:
		kind = proto.KindCharDev
	default:
		kind = proto.KindBlock
	}
	return kind, st.Size, nil
}

// openAt opens name in dir, never following a symbolic link.
func openAt(dir *os.File, name string, flag int, perm uint32) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir.Name(), name)), nil
}

// renameAt renames from to to, both in dir.
func renameAt(dir *os.File, from, to string) error {
	if err := unix.Renameat(int(dir.Fd()), from, int(dir.Fd()), to); err != nil {
		return &fs.PathError{Op: "rename", Path: to, Err: err}
	}
	return nil
}

// removeAt removes the file (not directory) name from dir.
func removeAt(dir *os.File, name string) error { return unix.Unlinkat(int(dir.Fd()), name, 0) }

// readlinkAt reads the target of the link name in dir.
func readlinkAt(dir *os.File, name string) (string, error) {
	buf := make([]byte, proto.MaxSymlinkLen+1)
	n, err := unix.Readlinkat(int(dir.Fd()), name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// symlinkAt makes name in dir a symbolic link to target.
func symlinkAt(target string, dir *os.File, name string) error {
	return unix.Symlinkat(target, int(dir.Fd()), name)
}

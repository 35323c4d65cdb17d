package store

import (
	"os"

	"golang.org/x/sys/unix"
)

const (
	haveRenameNoReplace = true
	haveOpenIn          = true
)

// renameNoReplace renames oldname in olddir to newname in newdir, failing
// with EEXIST if newname exists (even as a dangling symlink).
func renameNoReplace(olddir *os.File, oldname string, newdir *os.File, newname string) error {
	var err error
	cerr := withFd(olddir, func(ofd int) {
		cerr := withFd(newdir, func(nfd int) {
			err = ignoringEINTR(func() error {
				return unix.Renameat2(ofd, oldname, nfd, newname, unix.RENAME_NOREPLACE)
			})
		})
		if cerr != nil {
			err = cerr
		}
	})
	if cerr != nil {
		return &os.LinkError{Op: "renameat2", Old: oldname, New: newname, Err: cerr}
	}
	if err != nil {
		return &os.LinkError{Op: "renameat2", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// openCreateIn creates name in dir, which must not exist (not even as a
// symlink), for reading and writing; full is its name for the *os.File.
func openCreateIn(dir *os.File, name, full string) (*os.File, error) {
	var fd int
	var err error
	cerr := withFd(dir, func(dfd int) {
		err = ignoringEINTR(func() error {
			var oerr error
			fd, oerr = unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, filePerm)
			return oerr
		})
	})
	if cerr == nil {
		cerr = err
	}
	if cerr != nil {
		return nil, &os.PathError{Op: "openat", Path: full, Err: cerr}
	}
	return os.NewFile(uintptr(fd), full), nil
}

// withFd runs fn with f's descriptor, which stays open meanwhile.
func withFd(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if err != unix.EINTR {
			return err
		}
	}
}

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
	err := withFd(olddir, func(ofd int) error {
		return withFd(newdir, func(nfd int) error {
			return ignoringEINTR(func() error {
				return unix.Renameat2(ofd, oldname, nfd, newname, unix.RENAME_NOREPLACE)
			})
		})
	})
	if err != nil {
		return &os.LinkError{Op: "renameat2", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// openCreateIn creates name in dir, which must not exist (not even as a
// symlink), for reading and writing; full is its name for the *os.File.
func openCreateIn(dir *os.File, name, full string) (*os.File, error) {
	var fd int
	err := withFd(dir, func(dfd int) error {
		return ignoringEINTR(func() error {
			var err error
			fd, err = unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, filePerm)
			return err
		})
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: full, Err: err}
	}
	return os.NewFile(uintptr(fd), full), nil
}

// withFd runs fn with f's descriptor, which stays open meanwhile, and
// returns fn's error, or why f's descriptor could not be had.
func withFd(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if err != unix.EINTR {
			return err
		}
	}
}

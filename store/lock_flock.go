//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly

package store

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir creates (if needed) and exclusively locks the lock file name in
// root, so that two Stores never share a directory: Open's crash recovery
// would otherwise delete another Store's uploads in flight. The lock is
// released when the returned file is closed (or the process exits).
func lockDir(root *os.Root, name string) (*os.File, error) {
	f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE, filePerm)
	if err != nil {
		return nil, wrapIO("open lock file", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("store: directory %s is in use by another store", root.Name())
		}
		return nil, fmt.Errorf("store: lock %s: %w", name, err)
	}
	return f, nil
}

//go:build !(linux || darwin || freebsd || openbsd || netbsd || dragonfly)

package store

import "os"

// lockDir opens the lock file without locking it: this platform has no
// flock, so keeping two Stores off one directory is up to the caller.
func lockDir(root *os.Root, name string) (*os.File, error) {
	f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE, filePerm)
	if err != nil {
		return nil, wrapIO("open lock file", err)
	}
	return f, nil
}

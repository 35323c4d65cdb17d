package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// haveSyncFS: one syncfs(2) makes everything written to the file system
// durable, data and metadata, in one journal commit.
const haveSyncFS = true

// syncFS flushes the file system holding root's directory.
func syncFS(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return wrapIO("open store directory for syncfs", err)
	}
	defer d.Close()
	for {
		err := unix.Syncfs(int(d.Fd()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return wrapIO("syncfs", err)
		}
		return nil
	}
}

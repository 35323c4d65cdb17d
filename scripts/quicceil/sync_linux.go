package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS flushes the file system that d is on.
func syncFS(d *os.File) error { return unix.Syncfs(int(d.Fd())) }

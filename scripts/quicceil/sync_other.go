//go:build !linux

package main

import (
	"errors"
	"os"
)

// syncFS would flush the file system that d is on; -store is for Linux,
// where scripts/bench runs.
func syncFS(*os.File) error { return errors.New("-store needs Linux (syncfs)") }

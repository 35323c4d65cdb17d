//go:build !linux

package quiccli

import "os"

// openDirect returns nil: direct I/O is used on Linux only.
func openDirect(*os.File) *os.File { return nil }

package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCache tells the kernel that the n bytes of f at off (n 0: to the
// end), just read, will not be needed again soon, so their pages can leave
// the page cache. It is advice: failures are ignored, and pages in use
// stay.
func dropCache(f *os.File, off, n int64) {
	withFd(f, func(fd int) error { return unix.Fadvise(fd, off, n, unix.FADV_DONTNEED) })
}

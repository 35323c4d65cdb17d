package quiccli

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openDirect opens the file name for writes that bypass the page cache
// (O_DIRECT), for restored chunks: on a machine whose cores are busy with
// the transfer, copying every byte into the page cache, and reading it back
// to hash it, is a good part of a restore's CPU. It returns nil where the
// file system does not do direct I/O, or wants an alignment the chunks
// cannot give (see directAlign); then everything goes through the page
// cache as before.
func openDirect(name string) *os.File {
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, name, 0, unix.STATX_DIOALIGN, &st)
	if err == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
		// The kernel says what direct I/O needs here; 0 means none at all.
		if st.Dio_mem_align == 0 || st.Dio_offset_align == 0 ||
			directAlign%st.Dio_mem_align != 0 || directAlign%st.Dio_offset_align != 0 {
			return nil
		}
	}
	// Without STATX_DIOALIGN (kernels before 6.1) try: a write the file
	// system refuses falls back to the page cache (restoreSink.write).
	f, err := os.OpenFile(name, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

package quiccli

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openDirect opens f's file a second time, for writes that bypass the page
// cache (O_DIRECT), for restored chunks: on a machine whose cores are busy
// with the transfer, copying every byte into the page cache, and reading
// it back to hash it, is a good part of a restore's CPU. It returns nil
// where the file system does not do direct I/O, wants an alignment the
// chunks cannot give (see directAlign), or the name no longer leads to f's
// file (replaced behind our back: the chunks must go where the hasher
// thinks they went). Then everything goes through f and the page cache.
func openDirect(f *os.File) *os.File {
	var st unix.Statx_t
	err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st)
	if err == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
		// The kernel says what direct I/O needs here; 0 means none at all.
		if st.Dio_mem_align == 0 || st.Dio_offset_align == 0 ||
			directAlign%st.Dio_mem_align != 0 || directAlign%st.Dio_offset_align != 0 {
			return nil
		}
	}
	// Without STATX_DIOALIGN (kernels before 6.1) try: a direct write the
	// file system refuses with EINVAL falls back to the page cache
	// (restoreSink.write).
	d, err := os.OpenFile(f.Name(), os.O_WRONLY|syscall.O_DIRECT|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	if !sameFile(f, d) {
		d.Close()
		return nil
	}
	return d
}

// sameFile reports whether a and b are open on the same file.
func sameFile(a, b *os.File) bool {
	sa, err := a.Stat()
	if err != nil {
		return false
	}
	sb, err := b.Stat()
	return err == nil && os.SameFile(sa, sb)
}

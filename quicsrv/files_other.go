//go:build !unix

package quicsrv

// openFileLimit reports no limit where there is no RLIMIT_NOFILE; the
// defaults then assume fallbackOpenFileLimit.
func openFileLimit() (soft, hard uint64, ok bool) { return 0, 0, false }

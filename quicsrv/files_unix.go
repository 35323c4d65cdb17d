//go:build unix

package quicsrv

import "syscall"

// openFileLimit returns the process's soft and hard RLIMIT_NOFILE. Go
// raises the soft limit to (just under) the hard one when a program
// starts (since Go 1.19; see syscall's rlimit.go), so there is nothing
// left for qbackupd to raise: the soft limit is what it can use.
func openFileLimit() (soft, hard uint64, ok bool) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, false
	}
	return uint64(lim.Cur), uint64(lim.Max), true
}

package quiccli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sendLockFile in the home is locked by a running send. Two sends of one
// identity at once would fight over the same uploads (the server lets the
// newer session take over, and the other fails with "another session of
// this client took over the upload"), so the second is refused at once
// instead. The file holds the PID and start time of the send holding it.
const sendLockFile = "send.lock"

// sendLock is a held send lock; Close releases it.
type sendLock struct{ f *os.File }

// lockSend takes the send lock of home, or fails at once, saying which
// process holds it, if another send (in this process or another) does.
// The lock is flock(2)'s, so the kernel releases it when the process
// exits or dies, however it ends; the file stays. Where flock(2) is
// missing (not unix) it locks nothing.
func lockSend(home string) (*sendLock, error) {
	path := filepath.Join(home, sendLockFile)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create %s (%v): fix the permissions, or give --home another directory", home, unwrapPathError(err))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open the lock file %s (%v): fix the permissions, or give --home another directory", path, unwrapPathError(err))
	}
	locked, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot lock %s (%v): give --home a directory on a local file system", path, err)
	}
	if !locked {
		holder := lockHolder(f)
		f.Close()
		return nil, fmt.Errorf("another qbackup send%s is running with the identity in %s: wait for it to finish, or use another --home for another identity", holder, home)
	}
	// Best effort: the lock holds without it, only the message is vaguer.
	if f.Truncate(0) == nil {
		f.WriteAt([]byte(fmt.Sprintf("%d %s\n", os.Getpid(), time.Now().Format(time.RFC3339))), 0)
	}
	return &sendLock{f: f}, nil
}

// Close releases the lock.
func (l *sendLock) Close() error {
	l.f.Truncate(0) // no holder to name any more
	return l.f.Close()
}

// lockHolder describes the holder of the lock on f, from what it wrote
// there: " (pid 1234, started 2006-01-02 15:04:05)", or "" if it has not
// written it yet.
func lockHolder(f *os.File) string {
	b := make([]byte, 128)
	n, _ := f.ReadAt(b, 0)
	fields := strings.Fields(string(b[:n]))
	if len(fields) != 2 {
		return ""
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil {
		return ""
	}
	started, err := time.Parse(time.RFC3339, fields[1])
	if err != nil {
		return fmt.Sprintf(" (pid %d)", pid)
	}
	return fmt.Sprintf(" (pid %d, started %s)", pid, started.Local().Format("2006-01-02 15:04:05"))
}

package quiccli

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// lockHolderEnv makes the test binary, run again, the process of
// TestHelperLockHolder: it takes the send lock of the home named here.
const lockHolderEnv = "QBACKUP_LOCK_HOLDER_HOME"

// TestHelperLockHolder is not a test: it is the process that
// TestCLISendLockedByAnotherProcess starts and kills. It takes the send
// lock, says "locked" and waits to be killed.
func TestHelperLockHolder(t *testing.T) {
	home := os.Getenv(lockHolderEnv)
	if home == "" {
		return // run as an ordinary test: nothing to do
	}
	if _, err := lockSend(home); err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
	fmt.Println("locked")
	time.Sleep(time.Minute)
	os.Exit(4)
}

// TestCLISendLocked: while a send holds the home's lock, a second send of
// the same home fails at once, says who holds it and what to do, and
// sends nothing; ls and restore do not wait for it; and a send releases
// the lock when it ends.
func TestCLISendLocked(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	f := filepath.Join(t.TempDir(), "f")
	writeRandom(t, f, 1000, 1)
	u.ok("send", f)

	lock, err := lockSend(u.home)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := u.run("send", f)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("send waited %v for the lock, want a failure at once", d)
	}
	checkFailure(t, r, 1, "another qbackup send", fmt.Sprintf("pid %d", os.Getpid()), "started", u.home,
		"wait for it to finish", "another --home")
	if r.stdout != "" {
		t.Errorf("a send that could not lock printed %q", r.stdout)
	}
	u.ok("ls")
	u.ok("restore", "f", "-o", filepath.Join(t.TempDir(), "out"))
	lock.Close()

	u.ok("send", f)
	lock, err = lockSend(u.home)
	if err != nil {
		t.Fatalf("the lock after a send ended: %v", err)
	}
	lock.Close()
	if fi, err := os.Stat(filepath.Join(u.home, sendLockFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, %v; want mode 0600", sendLockFile, fi.Mode().Perm(), err)
	}
}

// TestCLISendLockedByAnotherProcess: the lock holds across processes, the
// message names the process that holds it, and when that process dies
// the kernel releases the lock: the next send goes ahead.
func TestCLISendLockedByAnotherProcess(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no flock(2)")
	}
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	f := filepath.Join(t.TempDir(), "f")
	writeRandom(t, f, 1000, 1)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLockHolder$", "-test.count=1")
	cmd.Env = append(os.Environ(), lockHolderEnv+"="+u.home)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("lock holder said %q, %v", line, err)
	}

	r := u.run("send", f)
	checkFailure(t, r, 1, "another qbackup send", fmt.Sprintf("pid %d,", cmd.Process.Pid), "another --home")

	cmd.Process.Kill() // as a crash would
	cmd.Wait()
	r = u.ok("send", f)
	if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 1}) {
		t.Errorf("send after the holder died: %+v, want 1 sent", got)
	}
	if strings.Contains(r.stderr, "another qbackup send") {
		t.Errorf("send after the holder died still saw it: %s", r.stderr)
	}
}

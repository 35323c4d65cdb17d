package quiccli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quicsrv"
)

// The server child of TestCrashServerKill: the test binary run again with
// these set runs quicsrv.Run, what qbackupd runs, until it is killed.
const (
	crashDataEnv   = "QBACKUP_CRASH_SERVER_DATA"
	crashListenEnv = "QBACKUP_CRASH_SERVER_LISTEN"
)

// TestHelperServerProcess is not a test: it is the server process that
// TestCrashServerKill starts and kills. It logs JSON to stdout, the
// "qbackupd listening" line (address, fingerprint) included.
func TestHelperServerProcess(t *testing.T) {
	dir := os.Getenv(crashDataEnv)
	if dir == "" {
		return // run as an ordinary test: nothing to do
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
	err := quicsrv.Run(context.Background(), quicsrv.Config{
		Data:      dir,
		Listen:    os.Getenv(crashListenEnv),
		ChunkSize: testChunk,
		Logger:    log,
	})
	fmt.Fprintf(os.Stderr, "helper server: Run returned: %v\n", err)
	os.Exit(3)
}

// crashServer is a qbackupd child process on a fixed address and data
// directory, which the test kills with SIGKILL and starts again.
type crashServer struct {
	t      *testing.T
	dir    string // data directory, kept across restarts
	listen string // 127.0.0.1:port, kept across restarts
	addr   string // as the server logged it
	fp     string // certificate fingerprint, as logged

	cmd     *exec.Cmd
	out     *syncBuffer   // the child's stdout and stderr
	drained chan struct{} // closed when the child's stdout is read to the end
	starts  int
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func startCrashServer(t *testing.T, dir, listen string) *crashServer {
	t.Helper()
	cs := &crashServer{t: t, dir: dir, listen: listen}
	t.Cleanup(func() {
		if cs.cmd != nil {
			cs.kill()
		}
	})
	cs.start()
	return cs
}

// start runs the child and waits until it logs that it is listening.
func (cs *crashServer) start() {
	t := cs.t
	t.Helper()
	if cs.cmd != nil {
		t.Fatal("crash server: start while running")
	}
	cs.starts++
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDataEnv+"="+cs.dir, crashListenEnv+"="+cs.listen)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cs.out = &syncBuffer{}
	cmd.Stderr = cs.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("crash server: start: %v", err)
	}
	cs.cmd = cmd
	cs.drained = make(chan struct{})
	type listening struct{ addr, fp string }
	ready := make(chan listening, 1)
	go func() {
		defer close(cs.drained)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			cs.out.Write([]byte(string(line) + "\n"))
			var m struct {
				Msg         string `json:"msg"`
				Addr        string `json:"addr"`
				Fingerprint string `json:"fingerprint"`
			}
			if json.Unmarshal(line, &m) == nil && m.Msg == "qbackupd listening" {
				select {
				case ready <- listening{m.Addr, m.Fingerprint}:
				default:
				}
			}
		}
	}()
	select {
	case l := <-ready:
		if cs.fp != "" && l.fp != cs.fp {
			t.Fatalf("crash server: fingerprint changed across a restart: %s, then %s", cs.fp, l.fp)
		}
		cs.addr, cs.fp = l.addr, l.fp
	case <-cs.drained:
		cmd.Wait()
		cs.cmd = nil
		t.Fatalf("crash server: exited before listening (%v):\n%s", cmd.ProcessState, cs.out)
	case <-time.After(30 * time.Second):
		cs.kill()
		t.Fatalf("crash server: not listening after 30s:\n%s", cs.out)
	}
}

// kill sends SIGKILL and reaps the child.
func (cs *crashServer) kill() {
	if cs.cmd == nil {
		return
	}
	cs.cmd.Process.Kill() // SIGKILL on Unix
	<-cs.drained
	cs.cmd.Wait()
	cs.cmd = nil
}

// logInteresting logs what the child said about recovery and resume, and
// everything if the test has failed.
func (cs *crashServer) logInteresting(label string) {
	t := cs.t
	t.Helper()
	all := cs.out.String()
	if t.Failed() {
		t.Logf("%s: server output:\n%s", label, all)
		return
	}
	var keep []string
	for line := range strings.Lines(all) {
		if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) ||
			strings.Contains(line, "partial uploads") || strings.Contains(line, "unclean stop") ||
			strings.Contains(line, "panic") || strings.Contains(line, "DATA RACE") {
			keep = append(keep, strings.TrimRight(line, "\n"))
		}
	}
	if len(keep) > 0 {
		t.Logf("%s: server said:\n%s", label, strings.Join(keep, "\n"))
	}
	if strings.Contains(all, "DATA RACE") || strings.Contains(all, "panic:") {
		t.Errorf("%s: the server process raced or panicked:\n%s", label, all)
	}
}

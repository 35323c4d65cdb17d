package quicsrv_test

// A server killed with SIGKILL keeps what its checkpoints recorded: the
// test binary runs quicsrv.Run, what qbackupd runs, in a child process,
// and kills it.

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// killDataEnv, set, makes TestHelperKilledServer the server child of
// TestCheckpointSurvivesKill, serving that data directory.
const killDataEnv = "QBACKUP_QUICSRV_KILL_DATA"

// TestHelperKilledServer is not a test: it is the server process that
// TestCheckpointSurvivesKill starts and kills. It logs JSON to stdout,
// the "qbackupd listening" line (address, fingerprint) included.
func TestHelperKilledServer(t *testing.T) {
	dir := os.Getenv(killDataEnv)
	if dir == "" {
		return // run as an ordinary test: nothing to do
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	err := quicsrv.Run(context.Background(), quicsrv.Config{Data: dir, Listen: "127.0.0.1:0", ChunkSize: 16 << 10, Logger: log})
	fmt.Fprintf(os.Stderr, "helper server: Run returned: %v\n", err)
	os.Exit(3)
}

// killedServer is a server child process on a data directory.
type killedServer struct {
	*srvtest.Server // Addr and Fingerprint only, for dialing
	cmd             *exec.Cmd
	mu              sync.Mutex
	out             strings.Builder
	done            chan struct{} // closed when its output is read to the end
}

// startKilled starts a server child on dir and waits until it listens.
func startKilled(t *testing.T, dir string) *killedServer {
	t.Helper()
	ks := &killedServer{done: make(chan struct{})}
	ks.cmd = exec.Command(os.Args[0], "-test.run=^TestHelperKilledServer$", "-test.count=1")
	ks.cmd.Env = append(os.Environ(), killDataEnv+"="+dir)
	stdout, err := ks.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ks.cmd.Stderr = ks.cmd.Stdout
	if err := ks.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ks.kill)
	ready := make(chan *srvtest.Server, 1)
	go func() {
		defer close(ks.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			ks.mu.Lock()
			ks.out.WriteString(sc.Text() + "\n")
			ks.mu.Unlock()
			var m struct{ Msg, Addr, Fingerprint string }
			if json.Unmarshal(sc.Bytes(), &m) == nil && m.Msg == "qbackupd listening" {
				ready <- &srvtest.Server{Addr: m.Addr, Fingerprint: m.Fingerprint, Dir: dir}
			}
		}
	}()
	select {
	case ks.Server = <-ready:
	case <-ks.done:
		t.Fatalf("the server child exited before listening:\n%s", ks.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("the server child is not listening after 30s:\n%s", ks.output())
	}
	return ks
}

func (ks *killedServer) output() string {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.out.String()
}

// kill sends SIGKILL and reaps the child.
func (ks *killedServer) kill() {
	if ks.cmd.Process == nil || ks.cmd.ProcessState != nil {
		return
	}
	ks.cmd.Process.Kill()
	<-ks.done
	ks.cmd.Wait()
}

// recordedUploads counts the upload rows of the data directory's
// database that record written ranges, read beside the running server.
func recordedUploads(t *testing.T, dir string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, "qbackup.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM uploads WHERE length(ranges) > 0").Scan(&n); err != nil {
		t.Fatalf("reading the uploads table: %v", err)
	}
	return n
}

// TestCheckpointSurvivesKill: an upload that receives nothing more, its
// last chunk written and its checksum sent but no commit yet, or its
// chunks stopped halfway, is checkpointed within about the checkpoint
// interval (2 s) like a running one, so a server killed with SIGKILL after
// that asks a resume only for what was not written. (The chunk that
// completed an upload was never checkpointed, nor were the last chunks
// before a pause: the resume asked for them again.)
func TestCheckpointSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	const size = 256 << 10
	tests := []struct {
		name string
		sent int // bytes sent before the kill
	}{
		{"waiting for the commit", size},
		{"chunks stopped halfway", size / 2},
	}
	key, _ := testKeys(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			srv := startKilled(t, dir)
			c := registered(t, srv.Server, "killed", key)
			id := c.id
			data := seededBytes(3, size)
			r := c.startUpload("f", data)
			c.sendData(c.chunkFrames(r.Xfer, r.UploadID, data[:tt.sent], int(c.welcome.ChunkSize))...)
			if tt.sent == size {
				ck := expect[*proto.UploadChecksum](c)
				if ck.Xfer != r.Xfer {
					t.Fatalf("checksum for transfer %d, want %d", ck.Xfer, r.Xfer)
				}
			}
			start := time.Now()
			for recordedUploads(t, dir) == 0 && time.Since(start) < 6*time.Second {
				time.Sleep(20 * time.Millisecond)
			}
			if recordedUploads(t, dir) == 0 {
				t.Logf("no checkpoint within %v of the last byte sent", time.Since(start).Round(10*time.Millisecond))
			} else {
				t.Logf("checkpoint recorded %v after the last byte was sent", time.Since(start).Round(10*time.Millisecond))
			}
			srv.kill()

			srv = startKilled(t, dir)
			c = dialRaw(t, srv.Server)
			c.reconnect(id, key)
			c.send(c.uploadReq("f", data))
			ready := expect[*proto.UploadReady](c)
			var want []proto.Range
			if tt.sent < size {
				want = []proto.Range{{Off: uint64(tt.sent), Len: uint64(size - tt.sent)}}
			}
			if ready.UploadID != r.UploadID || !slices.Equal(ready.Missing, want) {
				t.Fatalf("after the kill, the request got upload %x missing %v; want %x missing %v\nserver output:\n%s",
					ready.UploadID, ready.Missing, r.UploadID, want, srv.output())
			}
			c.sendData(framesAt(c, ready.Xfer, ready.UploadID, data, tt.sent, size, int(c.welcome.ChunkSize))...)
			if res := c.finishUpload(ready.Xfer, data); res.Status != proto.ResultStored {
				t.Fatalf("resumed upload: %+v", res)
			}
			c.close()
		})
	}
}

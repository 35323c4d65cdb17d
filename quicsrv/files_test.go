package quicsrv_test

// Open files: transfers hold their files within a total and a share per
// client (issue 15), so a flood of open transfers is refused with 0xb
// while another client is served, and every path gives its file back.

import (
	"bytes"
	"context"
	"crypto/rsa"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// fdCount is the process's open descriptors by what they are.
type fdCount struct {
	transfer int // regular files under the data directory's clients/ and tmp/: what transfers hold
	store    int // the store's own: its directories and database files, which it keeps as it sees fit
	other    int // the rest: sockets, the runtime's, the log's
}

// countFDs reads /proc/self/fd, with dir the server's data directory; ok
// is false where there is no /proc.
func countFDs(t testing.TB, dir string) (n fdCount, ok bool) {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return n, false
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join("/proc/self/fd", e.Name())
		target, err := os.Readlink(p)
		if err != nil {
			continue // closed meanwhile, like ReadDir's own
		}
		rel, inside := strings.CutPrefix(target, real+"/")
		switch {
		case target == real:
			n.store++
		case !inside:
			n.other++
		case strings.HasPrefix(rel, "clients/") || strings.HasPrefix(rel, "tmp/"):
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				n.transfer++
			} else {
				n.store++
			}
		default:
			n.store++
		}
	}
	return n, true
}

// floodResult is what one connection of a flood got.
type floodResult struct {
	c        *rawClient
	opened   int                   // transfers the server opened
	refusals []*proto.ErrorMessage // all CodeLimit, or the test failed
}

// flood opens a connection as client name, asks for uploads (sent no
// byte of) and restores of the names given, all at once, and collects
// the answers. Any answer to a request but a transfer or a CodeLimit
// refusal fails the test.
func flood(t *testing.T, srv *srvtest.Server, name string, key *rsa.PrivateKey, tag string, uploads int, restores []string) floodResult {
	t.Helper()
	c := registered(t, srv, name, key)
	var ms []proto.Message
	data := make([]byte, 4096)
	for i := range uploads {
		ms = append(ms, c.uploadReq(fmt.Sprintf("flood/%s-%d", tag, i), data))
	}
	for _, n := range restores {
		ms = append(ms, &proto.RestoreRequest{Req: c.nextReq(), Name: n})
	}
	c.send(ms...)
	r := floodResult{c: c}
	for range ms {
		switch m := expectAny(c).(type) {
		case *proto.UploadReady, *proto.RestoreReady:
			r.opened++
		case *proto.ErrorMessage:
			if m.Code != proto.CodeLimit {
				t.Errorf("%s: request %d refused with %v; want only 0xb", name, m.Req, m.Err())
			}
			r.refusals = append(r.refusals, m)
		default:
			t.Fatalf("%s: %v in answer to a request", name, m.Type())
		}
	}
	return r
}

// TestOpenFileCaps floods the server with open uploads and restores,
// from two clients at their share and from one client alone at the total.
// The flood is refused with 0xb, never 0x8; another client is served
// while two clients flood; what the budget counts is what the process
// holds open; and once the flood leaves, every file is given back.
func TestOpenFileCaps(t *testing.T) {
	tests := []struct {
		name             string
		total, perClient int
		flooders         int    // clients, two connections each
		wantOpened       int    // per flooder; 0: see probeRefused
		wantMsg          string // in every refusal
		// The total alone is the limit: the flooder tops up one request
		// at a time until refused (a file being opened counts twice, so
		// it ends one short of the total), and the probe is refused too.
		probeRefused bool
	}{
		{
			// Without the share, the two would take all 44.
			name: "two clients at their share", total: 44, perClient: 10, flooders: 2, wantOpened: 10,
			wantMsg: "this client has 10 files open for transfers, the server's limit per client",
		},
		{
			name: "one client at the total", total: 12, perClient: 100, flooders: 1,
			wantMsg:      "server busy: transfers hold as many files open as the server allows (12)",
			probeRefused: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, func(s *quicsrv.Server) { s.MaxOpenFiles, s.MaxOpenFilesPerClient = tt.total, tt.perClient })
			srv := w.srv
			if total, perClient := quicsrv.OpenFileCaps(srv.Srv); total != tt.total || perClient != tt.perClient {
				t.Fatalf("caps %d, %d; want %d, %d", total, perClient, tt.total, tt.perClient)
			}
			// Files for the flooders to restore, stored before.
			var names []string
			var stored []string
			for i := range tt.flooders {
				name := fmt.Sprintf("%s-%d", badName, i)
				names = append(names, name)
				c := registered(t, srv, name, w.bad)
				for j := range 2 {
					c.upload(fmt.Sprintf("kept-%d", j), randBytes(3000))
				}
				c.close()
			}
			stored = []string{"kept-0", "kept-1", "kept-0", "kept-1"}
			waitFor(t, "the setup's files to be given back", func() bool { return quicsrv.FilesInUse(srv.Srv) == 0 })
			before, procFD := countFDs(t, srv.Dir)

			var conns []floodResult
			opened := 0
			for i, name := range names {
				mine := 0
				for j := range 2 {
					r := flood(t, srv, name, w.bad, fmt.Sprintf("%d-%d", i, j), 12, stored)
					mine += r.opened
					for _, em := range r.refusals {
						if !strings.Contains(em.Message, tt.wantMsg) {
							t.Errorf("%s: refused with %q; want it to say %q", name, em.Message, tt.wantMsg)
						}
					}
					conns = append(conns, r)
				}
				if tt.probeRefused {
					// Top up one request at a time: no other file is being
					// opened meanwhile.
					r := conns[len(conns)-1]
					for i := 0; ; i++ {
						r.c.send(r.c.uploadReq(fmt.Sprintf("flood/top-up-%d", i), make([]byte, 10)))
						if em, ok := expectAny(r.c).(*proto.ErrorMessage); ok {
							if em.Code != proto.CodeLimit || !strings.Contains(em.Message, tt.wantMsg) {
								t.Fatalf("top-up refused with %v; want %q", em.Err(), tt.wantMsg)
							}
							break
						}
						mine++
					}
					if mine != tt.total-1 {
						t.Errorf("%s holds %d transfers; want %d, one short of the total", name, mine, tt.total-1)
					}
				} else if mine != tt.wantOpened {
					t.Errorf("%s got %d transfers opened; want its share, %d", name, mine, tt.wantOpened)
				}
				opened += mine
			}
			if got := quicsrv.FilesInUse(srv.Srv); got != opened {
				t.Errorf("the budget counts %d files in use; %d transfers are open", got, opened)
			}
			if during, _ := countFDs(t, srv.Dir); procFD && during.transfer != opened {
				t.Errorf("the process holds %d files under the data directory; %d transfers are open", during.transfer, opened)
			}

			if tt.probeRefused {
				p := registered(t, srv, goodName, w.key)
				p.send(p.uploadReq("docs/refused.bin", randBytes(100)))
				if em := p.expectError(p.req, proto.CodeLimit); !strings.Contains(em.Message, tt.wantMsg) {
					t.Errorf("the probe's upload refused with %q; want %q", em.Message, tt.wantMsg)
				}
				p.send(&proto.RestoreRequest{Req: p.nextReq(), Name: "docs/file-001.bin"})
				p.expectError(p.req, proto.CodeLimit)
				p.close()
			} else {
				w.healthy(t) // upload, list and restore while the flood holds its files
			}

			for _, r := range conns {
				r.c.close()
			}
			waitFor(t, "every file to be given back", func() bool { return quicsrv.FilesInUse(srv.Srv) == 0 })
			if procFD {
				waitFor(t, "the process to hold no more descriptors than before the flood", func() bool {
					n, _ := countFDs(t, srv.Dir)
					return n.transfer == 0 && n.other <= before.other
				})
			}
			w.healthy(t)
			w.restoreAll(t)
		})
	}
}

// TestOpenFilesReleased runs every way a transfer ends and checks after
// each that the budget and the process hold no transfer's file, and at
// the end no more descriptors than at the start.
func TestOpenFilesReleased(t *testing.T) {
	const timeout = time.Second
	w := newWorld(t, func(s *quicsrv.Server) {
		s.ChunkSize = 1024
		s.MaxTransfers = 4
		s.TransferTimeout = timeout
		s.MaxOpenFiles, s.MaxOpenFilesPerClient = 40, 20
	})
	srv := w.srv
	m := w.mallory(t)
	data := randBytes(8 * 1024)
	m.upload("stored.bin", data)
	m.upload("gone.bin", data)
	m.close()
	waitFor(t, "the setup's files to be given back", func() bool { return quicsrv.FilesInUse(srv.Srv) == 0 })
	before, procFD := countFDs(t, srv.Dir)
	id := m.id

	// conn is a new session of the flooding client.
	conn := func() *rawClient {
		c := dialRaw(t, srv)
		c.reconnect(id, w.bad)
		return c
	}
	// half sends the first half of data on transfer r and waits for it
	// to be written.
	half := func(c *rawClient, r *proto.UploadReady) {
		t.Helper()
		was := quicsrv.WrittenBytes(srv.Srv)
		c.sendData(framesAt(c, r.Xfer, r.UploadID, data, 0, len(data)/2, 1024)...)
		waitFor(t, "half the file to be written", func() bool { return quicsrv.WrittenBytes(srv.Srv) >= was+uint64(len(data)/2) })
	}
	held := func(want int) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d files in use", want), func() bool { return quicsrv.FilesInUse(srv.Srv) == want })
	}

	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"committed", func(t *testing.T) {
			c := conn()
			c.upload("a.bin", data)
			c.close()
		}},
		{"aborted", func(t *testing.T) {
			c := conn()
			r := c.startUpload("b.bin", data)
			held(1)
			c.send(&proto.UploadAbort{Xfer: r.Xfer})
			if res := expect[*proto.UploadResult](c); res.Status != proto.ResultDiscarded {
				t.Fatalf("abort: %+v", res)
			}
			c.close()
		}},
		{"discarded at the end of the session", func(t *testing.T) {
			c := conn()
			c.startUpload("c.bin", data)
			c.close()
		}},
		{"kept for resume at the end of the session", func(t *testing.T) {
			c := conn()
			half(c, c.startUpload("d.bin", data))
			c.close()
		}},
		{"resumed and committed", func(t *testing.T) {
			c := conn()
			c.send(c.uploadReq("d.bin", data))
			r := expect[*proto.UploadReady](c)
			if len(r.Missing) != 1 || r.Missing[0].Off != uint64(len(data)/2) {
				t.Fatalf("resume asks for %v", r.Missing)
			}
			c.sendData(framesAt(c, r.Xfer, r.UploadID, data, len(data)/2, len(data), 1024)...)
			c.finishUpload(r.Xfer, data)
			c.close()
		}},
		{"stalled", func(t *testing.T) {
			c := conn()
			r := c.startUpload("e.bin", data)
			half(c, r)
			c.expectError(r.Req, proto.CodeAborted)
			held(0) // with the session still open
			c.close()
		}},
		{"taken over by a new session", func(t *testing.T) {
			old := conn()
			r := old.startUpload("f.bin", data)
			half(old, r)
			now := conn()
			now.send(now.uploadReq("f.bin", data))
			old.expectError(r.Req, proto.CodeAborted)
			ready := expect[*proto.UploadReady](now)
			held(1)
			now.sendData(framesAt(now, ready.Xfer, ready.UploadID, data, len(data)/2, len(data), 1024)...)
			now.finishUpload(ready.Xfer, data)
			old.close()
			now.close()
		}},
		{"joined from another session", func(t *testing.T) {
			owner, peer := conn(), conn()
			r := owner.startUpload("g.bin", data)
			jr, em := peer.join(r.UploadID)
			if em != nil {
				t.Fatalf("join: %v", em.Err())
			}
			held(1) // the owner's file; a join opens none
			peer.sendData(framesAt(peer, jr.Xfer, r.UploadID, data, 0, len(data), 1024)...)
			owner.finishUpload(r.Xfer, data)
			owner.close()
			peer.close()
		}},
		{"restored", func(t *testing.T) {
			c := conn()
			c.restore("stored.bin", 0)
			c.close()
		}},
		{"restore given up", func(t *testing.T) {
			c := conn()
			c.acceptData()
			c.send(&proto.RestoreRequest{Req: c.nextReq(), Name: "stored.bin"})
			rr := expect[*proto.RestoreReady](c)
			held(1)
			c.giveUp(rr.Xfer)
			held(0) // with the session still open
			c.close()
		}},
		{"restore open at the end of the session", func(t *testing.T) {
			c := conn()
			c.send(&proto.RestoreRequest{Req: c.nextReq(), Name: "stored.bin"})
			expect[*proto.RestoreReady](c)
			held(1)
			c.close()
		}},
		{"restore of a stored file gone from the disk", func(t *testing.T) {
			gone, err := filepath.Glob(filepath.Join(srv.Dir, "clients", "*", "gone.bin;1"))
			if err != nil || len(gone) != 1 {
				t.Fatalf("finding gone.bin's file: %v, %v", gone, err)
			}
			if err := os.Remove(gone[0]); err != nil {
				t.Fatal(err)
			}
			c := conn()
			c.send(&proto.RestoreRequest{Req: c.nextReq(), Name: "gone.bin"})
			expect[*proto.ErrorMessage](c)
			c.close()
		}},
		{"restore beyond MaxTransfers", func(t *testing.T) {
			c := conn()
			for i := range 4 {
				c.startUpload(fmt.Sprintf("h-%d.bin", i), data)
			}
			c.send(&proto.RestoreRequest{Req: c.nextReq(), Name: "stored.bin"})
			if em := c.expectError(c.req, proto.CodeLimit); !strings.Contains(em.Message, "transfers open in one session") {
				t.Errorf("refused with %q", em.Message)
			}
			held(4)
			c.close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t)
			held(0)
			if procFD {
				waitFor(t, "the process to hold no transfer's file", func() bool {
					n, _ := countFDs(t, srv.Dir)
					return n.transfer == 0
				})
			}
		})
	}

	// A server that closes with transfers open gives their files back.
	c := conn()
	c.startUpload("i.bin", data)
	c.send(&proto.RestoreRequest{Req: c.nextReq(), Name: "stored.bin"})
	expect[*proto.RestoreReady](c)
	held(2)
	if procFD {
		waitFor(t, "all transfers' sessions and clients to be gone", func() bool { return quicsrv.SessionCount(srv.Srv) == 1 })
		if n, _ := countFDs(t, srv.Dir); n.transfer != 2 {
			t.Errorf("the process holds %d transfers' files; the budget counts 2", n.transfer)
		}
	}
	srv.Srv.Close()
	if n := quicsrv.FilesInUse(srv.Srv); n != 0 {
		t.Errorf("%d files in use after Close", n)
	}
	c.close()
	if procFD {
		waitFor(t, "the process to hold no more descriptors than at the start", func() bool {
			n, _ := countFDs(t, srv.Dir)
			return n.transfer == 0 && n.other <= before.other
		})
	}
}

// TestOpenFileFlags: qbackupd takes the caps from flags or the
// environment, logs them with the open-file limit, and refuses negative
// ones.
func TestOpenFileFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string // in the log line about open files
	}{
		{"flags", []string{"--max-open-files", "300", "--max-client-open-files", "20"}, nil, "max_open_files=300 max_client_open_files=20"},
		{"environment", nil, map[string]string{"QBACKUPD_MAX_OPEN_FILES": "400", "QBACKUPD_MAX_CLIENT_OPEN_FILES": "30"}, "max_open_files=400 max_client_open_files=30"},
		{"share of the total", []string{"--max-open-files", "400"}, nil, "max_open_files=400 max_client_open_files=100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			logs := &logBuffer{}
			t.Cleanup(func() { t.Logf("server log:\n%s", logs.String()) })
			done := make(chan int, 1)
			args := append([]string{"--data", t.TempDir(), "--listen", "127.0.0.1:0"}, tt.args...)
			go func() { done <- quicsrv.Main(ctx, args, new(bytes.Buffer), logs) }()
			line := waitLog(t, logs, `msg="open files" .*`)
			if !strings.Contains(line, tt.want) || !regexp.MustCompile(`limit=\d+ hard_limit=\d+ `).MatchString(line) {
				t.Errorf("log line %q; want the limit and %q", line, tt.want)
			}
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("qbackupd exited with %d", code)
			}
		})
	}
	_, stderr, code := qbackupd(t, "--data", t.TempDir(), "--max-client-open-files=-1")
	if code != 1 || !strings.Contains(stderr, "--max-open-files and --max-client-open-files must not be negative") {
		t.Errorf("a negative cap: exit %d, %q", code, stderr)
	}
}

// TestOpenFileTakeOverAtShare: a client whose older session holds its
// whole share (its connection died, and the server has not noticed yet)
// can resume a file from a new session: the takeover gives back the old
// session's file before the new request takes one.
func TestOpenFileTakeOverAtShare(t *testing.T) {
	w := newWorld(t, func(s *quicsrv.Server) { s.ChunkSize = 1024; s.MaxOpenFilesPerClient = 2 })
	old := w.mallory(t)
	data := randBytes(4096)
	r := old.startUpload("a.bin", data)
	old.sendData(framesAt(old, r.Xfer, r.UploadID, data, 0, 2048, 1024)...)
	old.startUpload("b.bin", data)
	now := dialRaw(t, w.srv)
	now.reconnect(old.id, w.bad)
	now.send(now.uploadReq("c.bin", data))
	if em := now.expectError(now.req, proto.CodeLimit); !strings.Contains(em.Message, "limit per client") {
		t.Fatalf("a third file refused with %q", em.Message)
	}
	now.send(now.uploadReq("a.bin", data))
	old.expectError(r.Req, proto.CodeAborted)
	ready := expect[*proto.UploadReady](now)
	if ready.UploadID != r.UploadID || len(ready.Missing) != 1 || ready.Missing[0].Off != 2048 {
		t.Fatalf("the new session got upload %x missing %v; want %x missing [2048, 4096)", ready.UploadID, ready.Missing, r.UploadID)
	}
	now.sendData(framesAt(now, ready.Xfer, ready.UploadID, data, 2048, len(data), 1024)...)
	now.finishUpload(ready.Xfer, data)
	old.close()
	now.close()
	waitFor(t, "every file to be given back", func() bool { return quicsrv.FilesInUse(w.srv.Srv) == 0 })
	w.healthy(t)
}

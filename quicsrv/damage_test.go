package quicsrv_test

// Damage on the server's disk, end to end: found by qbackupd check, the
// scrub or a restore, shown by List, refused by restores, healed by a
// send of the same content.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

// qbackupd runs the server's command line and returns stdout, stderr and
// the exit code.
func qbackupd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := quicsrv.Main(t.Context(), args, &out, &errOut)
	t.Logf("qbackupd %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return out.String(), errOut.String(), code
}

// logBuffer collects a server's log lines, for tests that look at them;
// they go to t.Log at the end of the test.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newLogBuffer returns a logBuffer and a logger at level writing to it.
func newLogBuffer(t *testing.T, level slog.Level) (*logBuffer, *slog.Logger) {
	l := &logBuffer{}
	t.Cleanup(func() { t.Logf("server log:\n%s", l.String()) })
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level}))
}

// waitLog waits until the log has a line matching re, and returns it.
func waitLog(t *testing.T, l *logBuffer, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(ioTimeout)
	for {
		if m := rx.FindString(l.String()); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line matching %q after %v", re, ioTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// storedPath returns the file on disk of version v of a client's file
// whose last name component is base (found by walking the store: the
// tests do not know the client directory's name).
func storedPath(t *testing.T, dir, base string, v int) string {
	t.Helper()
	var found string
	want := base + ";" + string(rune('0'+v))
	filepath.WalkDir(filepath.Join(dir, "clients"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == want {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no stored file %s under %s", want, dir)
	}
	return found
}

// flipByte flips the bits of one byte of a stored file in place, as bit
// rot would.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// entry returns the listing entry of name.
func (c *rawClient) entry(name string) *proto.ListEntry {
	c.t.Helper()
	for _, e := range c.list(name, 0) {
		if e.Name == name {
			return e
		}
	}
	c.t.Fatalf("%q is not listed", name)
	return nil
}

// waitDamaged waits until the listing says name is damaged.
func (c *rawClient) waitDamaged(name string) {
	c.t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !c.entry(name).Damaged {
		if time.Now().After(deadline) {
			c.t.Fatalf("%q not listed as damaged after %v", name, ioTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// restoreRefused requires a restore of name to be refused as damaged,
// with a message that names the file and says what to do.
func (c *rawClient) restoreRefused(name string) {
	c.t.Helper()
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: name})
	em := c.expectError(req, proto.CodeDamaged)
	if !strings.Contains(em.Message, `"`+name+`"`) || !strings.Contains(em.Message, "send the file again") {
		c.t.Errorf("restore of damaged %q refused with %q; want the name and what to do", name, em.Message)
	}
}

// TestDamageCheckedAndHealed is issue 14's story: one flipped byte in a
// stored file. qbackupd check, run while the server runs, finds it and
// marks it; List shows it; a restore is refused as damaged; the file is
// no longer "unchanged" to a send, with or without the checksums; the
// send's upload of the same content heals it; the restore then returns
// the right bytes and the check finds nothing.
func TestDamageCheckedAndHealed(t *testing.T) {
	logs, logger := newLogBuffer(t, slog.LevelInfo)
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Logger = logger })
	key, _ := testKeys(t)
	c := registered(t, srv, "alice", key)
	const name = "docs/report.txt"
	data := randBytes(300_000)
	c.upload(name, data)
	c.upload("docs/ok.txt", randBytes(1000))
	flipByte(t, storedPath(t, srv.Dir, "report.txt", 1), 123_456)

	out, errOut, code := qbackupd(t, "check", "--data", srv.Dir)
	if code != 1 || !strings.Contains(out, "damaged: client alice: "+name+" version 1: checksum mismatch") ||
		strings.Contains(out, "ok.txt") || !strings.Contains(out, "checked 2 versions") || !strings.Contains(out, "1 damaged") ||
		!strings.Contains(errOut, "found 1 damaged versions") || !strings.Contains(errOut, "send each file again") {
		t.Fatalf("qbackupd check of a damaged store: exit %d\n%s%s", code, out, errOut)
	}

	if e := c.entry(name); !e.Damaged || !e.Verified {
		t.Errorf("listing after the check: %+v, want damaged (and verified, as uploaded)", e)
	}
	if e := c.entry("docs/ok.txt"); e.Damaged {
		t.Errorf("the intact file is listed as damaged")
	}
	c.restoreRefused(name)

	// Not unchanged, whether the client compares size and modification
	// time (send) or checksums (send -c).
	for _, flags := range []uint8{0, proto.FlagHashed} {
		m := c.uploadReq(name, data)
		m.Flags = flags
		c.send(m)
		r := expect[*proto.UploadReady](c)
		if r.Req != m.Req || r.Status != proto.ReadySend {
			t.Fatalf("upload request (flags %#x) of the damaged file's content: %+v, want it asked for", flags, r)
		}
		c.send(&proto.UploadAbort{Xfer: r.Xfer})
		if res := expect[*proto.UploadResult](c); res.Status != proto.ResultDiscarded {
			t.Fatalf("abort: %+v", res)
		}
	}

	r := c.startUpload(name, data)
	c.sendData(c.chunkFrames(r.Xfer, r.UploadID, data, int(c.welcome.ChunkSize))...)
	if res := c.finishUpload(r.Xfer, data); res.Status != proto.ResultIdentical || res.Version != 1 {
		t.Fatalf("sending the same content again: %+v, want identical to version 1 (healed)", res)
	}
	waitLog(t, logs, `level=INFO msg="healed a damaged version[^"]*" .*name=`+name+` version=1`)
	if e := c.entry(name); e.Damaged {
		t.Errorf("listing after the heal: %+v, want not damaged", e)
	}
	if _, got := c.restore(name, 0); !bytes.Equal(got, data) {
		t.Error("restore after the heal returned other bytes")
	}

	if out, _, code := qbackupd(t, "check", "--data", srv.Dir); code != 0 || !strings.Contains(out, "0 damaged") {
		t.Errorf("qbackupd check after the heal: exit %d, %q; want 0, none damaged", code, out)
	}
}

// TestCheckCommand: the client filter, and what is not a check.
func TestCheckCommand(t *testing.T) {
	srv := srvtest.Start(t, nil)
	a, b := testKeys(t)
	ca := registered(t, srv, "alice", a)
	ca.upload("a", randBytes(100))
	flipByte(t, storedPath(t, srv.Dir, "a", 1), 50)
	registered(t, srv, "bob", b).upload("b", randBytes(100))
	tests := []struct {
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{[]string{"--client", "bob"}, 0, []string{"checked 1 versions", "of 1 clients", "0 damaged"}, nil},
		{[]string{"--client", "alice"}, 1, []string{"damaged: client alice: a version 1: checksum mismatch", "checked 1 versions"}, []string{"found 1 damaged"}},
		{[]string{"--client", "carol"}, 1, nil, []string{`no client named "carol"`, "qbackup register --name"}},
		{[]string{"--bogus"}, 2, nil, []string{"--bogus"}},
	}
	for _, tt := range tests {
		out, errOut, code := qbackupd(t, append([]string{"check", "--data", srv.Dir}, tt.args...)...)
		if code != tt.code {
			t.Errorf("check %v: exit %d, want %d", tt.args, code, tt.code)
		}
		for _, s := range tt.stdout {
			if !strings.Contains(out, s) {
				t.Errorf("check %v: stdout %q lacks %q", tt.args, out, s)
			}
		}
		for _, s := range tt.stderr {
			if !strings.Contains(errOut, s) {
				t.Errorf("check %v: stderr %q lacks %q", tt.args, errOut, s)
			}
		}
	}
	if _, errOut, code := qbackupd(t, "check", "--data", t.TempDir()); code != 1 || !strings.Contains(errOut, "no qbackup database") {
		t.Errorf("check of an empty directory: exit %d, %q", code, errOut)
	}
}

// TestRestoreFindsDamage: a restore that goes wrong because of the
// server's copy has that version checked again in the background, so the
// client's next attempt is refused as damaged at once, instead of
// downloading the file again only to find it bad.
func TestRestoreFindsDamage(t *testing.T) {
	const name = "f"
	const size, flipAt = 100_000, 90_000
	tests := []struct {
		what string
		// harm damages the stored file; restore then tries to restore it
		// once, as a client whose attempt fails.
		harm    func(t *testing.T, path string)
		restore func(c *rawClient, data []byte)
	}{
		{"the client says the checksums did not match",
			func(t *testing.T, p string) { flipByte(t, p, flipAt) },
			func(c *rawClient, data []byte) {
				// Resumed from the first half, which the client has:
				// the server sends only the rest, so it cannot compare
				// the whole file's cksum itself; only the client can
				// tell it.
				c.acceptData()
				req := c.nextReq()
				have := []proto.Range{{Off: 0, Len: size / 2}}
				c.send(&proto.RestoreResume{Req: req, Name: name, Version: 1, SHA256: sha256.Sum256(data), Have: have})
				rr, got := c.fetchRestore(req, name, data, have)
				if sha256.Sum256(got) == rr.SHA256 {
					c.t.Fatal("the damage did not reach the client")
				}
				c.send(&proto.RestoreDone{Xfer: rr.Xfer, Status: proto.DoneMismatch})
			}},
		{"the server's cksum of the file on its way out differs",
			func(t *testing.T, p string) { flipByte(t, p, flipAt) },
			func(c *rawClient, data []byte) {
				c.acceptData()
				req := c.nextReq()
				c.send(&proto.RestoreRequest{Req: req, Name: name})
				rr, _ := c.fetchRestore(req, name, nil, nil)
				c.send(&proto.RestoreDone{Xfer: rr.Xfer, Status: proto.DoneFailed}) // a client that does not say why
			}},
		{"the stored file is gone",
			func(t *testing.T, p string) {
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			},
			func(c *rawClient, data []byte) {
				req := c.nextReq()
				c.send(&proto.RestoreRequest{Req: req, Name: name})
				c.expectError(req, proto.CodeInternal)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.what, func(t *testing.T) {
			logs, logger := newLogBuffer(t, slog.LevelInfo)
			srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Logger = logger })
			key, _ := testKeys(t)
			c := registered(t, srv, "alice", key)
			data := randBytes(size)
			c.upload(name, data)
			tt.harm(t, storedPath(t, srv.Dir, name, 1))
			tt.restore(c, data)
			c.waitDamaged(name)
			c.restoreRefused(name)
			waitLog(t, logs, `level=WARN msg="stored version is damaged[^"]*" client=alice id=[0-9a-f]+ name=f version=1`)
		})
	}
}

// TestMismatchClaimOfIntactFile: a client that says an intact version
// did not match has it read again, but cannot have it marked: the mark
// follows the server's own check.
func TestMismatchClaimOfIntactFile(t *testing.T) {
	logs, logger := newLogBuffer(t, slog.LevelInfo)
	srv := srvtest.Start(t, func(s *quicsrv.Server) { s.Logger = logger })
	key, _ := testKeys(t)
	c := registered(t, srv, "alice", key)
	data := randBytes(10_000)
	c.upload("f", data)
	c.acceptData()
	req := c.nextReq()
	c.send(&proto.RestoreRequest{Req: req, Name: "f"})
	rr, _ := c.fetchRestore(req, "f", nil, nil)
	c.send(&proto.RestoreDone{Xfer: rr.Xfer, Status: proto.DoneMismatch})
	waitLog(t, logs, `level=INFO msg="stored version checked again: it is intact" client=alice id=[0-9a-f]+ name=f version=1`)
	if c.entry("f").Damaged {
		t.Error("an intact version is listed as damaged on the client's word")
	}
	if _, got := c.restore("f", 0); !bytes.Equal(got, data) {
		t.Error("restore after the claim returned other bytes")
	}
}

// TestScrub: with ScrubEvery set, the server finds a damaged file by
// itself, logs it and marks it, then sums up the pass.
func TestScrub(t *testing.T) {
	logs, logger := newLogBuffer(t, slog.LevelDebug)
	srv := srvtest.Start(t, func(s *quicsrv.Server) {
		s.Logger = logger
		s.ScrubEvery = 20 * time.Millisecond
	})
	key, _ := testKeys(t)
	c := registered(t, srv, "alice", key)
	c.upload("intact", randBytes(1000))
	c.upload("rotten", randBytes(5000))
	flipByte(t, storedPath(t, srv.Dir, "rotten", 1), 4000)
	c.waitDamaged("rotten")
	if c.entry("intact").Damaged {
		t.Error("the intact file is listed as damaged")
	}
	c.restoreRefused("rotten")
	waitLog(t, logs, `level=WARN msg="stored version is damaged[^"]*" client=alice id=[0-9a-f]+ name=rotten version=1 damage="checksum mismatch"`)
	waitLog(t, logs, `level=INFO msg="scrub done" versions=\d+ bytes=\d+ clients=1 damaged=1`)
	waitLog(t, logs, `level=DEBUG msg=checked client=alice id=[0-9a-f]+ name=intact version=1`)
}

// TestScrubStopsOnShutdown: a scrub in the middle of a file (here one it
// reads at 1 byte a second) ends as soon as the server closes, and
// records nothing for that file.
func TestScrubStopsOnShutdown(t *testing.T) {
	logs, logger := newLogBuffer(t, slog.LevelInfo)
	srv := srvtest.Start(t, func(s *quicsrv.Server) {
		s.Logger = logger
		s.ScrubEvery = time.Millisecond
		s.ScrubRate = 1
	})
	key, _ := testKeys(t)
	c := registered(t, srv, "alice", key)
	c.upload("big", randBytes(3<<20))
	deadline := time.Now().Add(ioTimeout)
	for quicsrv.ScrubRead(srv.Srv) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the scrub read nothing in %v", ioTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	closed := make(chan struct{})
	go func() {
		srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(ioTimeout):
		t.Fatalf("Close did not return in %v during a scrub", ioTimeout)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("closing the server during a scrub took %v", took)
	}
	// Close waited for the scrub: its last line is there already.
	if !strings.Contains(logs.String(), `msg="scrub stopped by the shutdown`) {
		t.Error("the scrub had not stopped when Close returned")
	}
	st, err := store.Open(t.Context(), srv.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fv, err := st.Latest(t.Context(), store.ClientID(c.id), "big")
	if err != nil || !fv.CheckedAt.IsZero() || fv.Damaged {
		t.Errorf("after a scrub cut short: %+v, %v; want never checked", fv, err)
	}
}

// TestLogLevel: qbackupd --log-level: the per-file lines are at debug,
// session-level ones at info.
func TestLogLevel(t *testing.T) {
	key, _ := testKeys(t)
	tests := []struct {
		level   string
		perFile bool
	}{
		{"info", false},
		{"debug", true},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			logs := &logBuffer{}
			t.Cleanup(func() { t.Logf("server log:\n%s", logs.String()) })
			done := make(chan int, 1)
			go func() {
				done <- quicsrv.Main(ctx, []string{"--data", dir, "--listen", "127.0.0.1:0", "--registration", "open", "--log-level", tt.level}, new(bytes.Buffer), logs)
			}()
			m := regexp.MustCompile(`addr=(\S+) fingerprint=([0-9a-f]+)`).FindStringSubmatch(waitLog(t, logs, `msg="qbackupd listening" .*`))
			if m == nil {
				t.Fatal("no address and fingerprint in the listening line")
			}
			c := registered(t, &srvtest.Server{Addr: m[1], Fingerprint: m[2], Dir: dir}, "alice", key)
			c.upload("f", randBytes(100))
			c.close()
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("qbackupd exited with %d", code)
			}
			log := logs.String()
			if got := regexp.MustCompile(`msg=stored .*name=f`).MatchString(log); got != tt.perFile {
				t.Errorf("--log-level %s: per-file line logged: %v, want %v", tt.level, got, tt.perFile)
			}
			if !strings.Contains(log, `msg="session started"`) {
				t.Errorf("--log-level %s: no session line", tt.level)
			}
		})
	}
}

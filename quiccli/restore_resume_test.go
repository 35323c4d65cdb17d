package quiccli

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// cutReporter runs cut, once and in a goroutine of its own, when the
// bytes restored reach at; it counts the reconnection warnings.
type cutReporter struct {
	nopReporter
	at    int64
	cut   func()
	moved atomic.Int64
	once  sync.Once
	warns atomic.Int32
}

func (r *cutReporter) File(string, int64) FileProgress { return cutFile{r} }
func (r *cutReporter) Warn(string, ...any)             { r.warns.Add(1) }

type cutFile struct{ r *cutReporter }

func (f cutFile) Add(n int64) {
	if f.r.moved.Add(n) >= f.r.at {
		f.r.once.Do(func() { go f.r.cut() })
	}
}
func (cutFile) Retry()             {}
func (cutFile) Done(string, error) {}

// storeTree sends a directory of one resumeSize file and a few small
// ones, and returns their contents by name under the directory.
func storeTree(t *testing.T, x *proxied) (string, map[string][]byte, int64) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"big.bin": writeRandom(t, filepath.Join(dir, "big.bin"), resumeSize, 41)}
	total := int64(resumeSize)
	for i := range 3 {
		name := fmt.Sprintf("small-%d", i)
		files[name] = writeRandom(t, filepath.Join(dir, name), 1000+i*70000, uint64(50+i))
		total += int64(len(files[name]))
	}
	s := connect(t, x.ctx, x.c)
	res := s.Send(x.ctx, SendOptions{Paths: []string{dir}}, nopReporter{})
	s.Close()
	if res.Sent != len(files)+1 { // and their directory
		t.Fatalf("stored %d of %d entries: %v", res.Sent, len(files)+1, res.FirstErr)
	}
	return "tree", files, total
}

// checkRestoredTree compares out with files, and that no temporary file
// is left beside them.
func checkRestoredTree(t *testing.T, out string, files map[string][]byte) {
	t.Helper()
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(files) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("restored directory holds %v; want the %d files only", names, len(files))
	}
	for name, want := range files {
		if got, err := os.ReadFile(filepath.Join(out, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("restored %s: %d bytes (%v), differ from the %d stored", name, len(got), err, len(want))
		}
	}
}

// TestRestoreCarriesOn: a restore whose connection is lost part-way
// reconnects on its own and resumes each file from the bytes it has,
// whether the link went dark for longer than the idle timeout or the
// server restarted.
func TestRestoreCarriesOn(t *testing.T) {
	tests := []struct {
		name     string
		fraction float64 // of the bytes restored, when the cut comes
		cut      func(x *proxied)
	}{
		{"outage at 30%", 0.3, func(x *proxied) {
			x.proxy.SetDrop(toServer, 1)
			x.proxy.SetDrop(toClient, 1)
			time.AfterFunc(3*time.Second, func() {
				x.proxy.SetDrop(toServer, 0)
				x.proxy.SetDrop(toClient, 0)
			})
		}},
		{"server restart at 50%", 0.5, func(x *proxied) { x.srv.Restart() }},
		{"server restart at 95%", 0.95, func(x *proxied) { x.srv.Restart() }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := startProxied(t, uint64(60+i))
			name, files, total := storeTree(t, x)
			x.c.dialHook = func(o *dialOptions) {
				o.Server = x.proxy.Addr()
				o.QUICConfig = func(q *quic.Config) {
					q.MaxIdleTimeout = 1500 * time.Millisecond
					q.KeepAlivePeriod = 300 * time.Millisecond
				}
			}
			// A slow link, so that the cut falls in the middle.
			x.proxy.SetRate(toClient, 8<<20)
			rep := &cutReporter{at: int64(tt.fraction * float64(total)), cut: func() { tt.cut(x) }}
			out := filepath.Join(t.TempDir(), "out")
			res, err := x.c.RestoreResilient(x.ctx, RestoreOptions{Name: name, Output: out},
				ReconnectOptions{Attempts: 6, MaxWait: time.Second}, rep)
			if err != nil {
				t.Fatal(err)
			}
			if res.Files != len(files) || res.Failed != 0 {
				t.Fatalf("restored %d, failed %d (%v); want %d, 0", res.Files, res.Failed, res.FirstErr, len(files))
			}
			if rep.warns.Load() == 0 {
				t.Errorf("no reconnection: the cut missed the restore")
			}
			checkRestoredTree(t, out, files)
			t.Logf("received %d bytes for %d: %.3f×, %d reconnection warnings", res.Received, total, float64(res.Received)/float64(total), rep.warns.Load())
			if float64(res.Received) > 1.05*float64(total) {
				t.Errorf("received %d bytes in all for %d: over 1.05×", res.Received, total)
			}
		})
	}
}

// TestRestoreResumeStartsAfresh: what an interrupted restore left is
// resumed only if the server still has that content, and kept only if the
// whole file then checks out; otherwise the file is restored from the
// start. Either way the result is the stored file.
func TestRestoreResumeStartsAfresh(t *testing.T) {
	x := startProxied(t, 70)
	ctx := x.ctx
	path := filepath.Join(t.TempDir(), "f.bin")
	data := writeRandom(t, path, 3<<20, 71)
	s := connect(t, ctx, x.c)
	defer s.Close()
	if res := s.Send(ctx, SendOptions{Paths: []string{path}}, nopReporter{}); res.Sent != 1 {
		t.Fatalf("send: %v", res.FirstErr)
	}
	have, size := uint64(1<<20), int64(len(data))
	var haveSet proto.RangeSet
	haveSet.Add(0, have)
	tests := []struct {
		name     string
		prefix   []byte   // what the partial file holds
		sha      [32]byte // the content it claims to be part of
		version  uint32
		received int64 // bytes that had to come
	}{
		// The server refuses to resume: the whole file comes.
		{"other content", data[:have], sha256.Sum256([]byte("another file")), 1, size},
		{"no such version", data[:have], sha256.Sum256(data), 7, size},
		// The rest comes, the checksums fail, then the whole file.
		{"damaged prefix", bytes.Repeat([]byte{0xa5}, int(have)), sha256.Sum256(data), 1, 2*size - int64(have)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			tmp := filepath.Join(dir, ".qbackup-partial.tmp")
			f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(tt.prefix); err != nil {
				t.Fatal(err)
			}
			tg := &restoreTarget{name: "f.bin", version: 1, size: int64(len(data)), kind: proto.KindFile, sha: sha256.Sum256(data),
				meta: &proto.Meta{}, rel: "f.bin", dest: filepath.Join(dir, "f.bin"),
				part: &partialRestore{root: root, tmp: filepath.Base(tmp), f: f, have: haveSet.Clone(), version: tt.version, size: uint64(len(data)), sha: tt.sha}}
			var received atomic.Int64
			run := newRestoreRun(root, false, nopReporter{})
			n, _, _, err := s.restoreFile(ctx, run, tg, true, nopFile{}, &received)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(tg.dest); n != int64(len(data)) || !bytes.Equal(got, data) {
				t.Errorf("restored %d bytes that differ from the %d stored", len(got), len(data))
			}
			if _, err := os.Stat(tmp); !os.IsNotExist(err) {
				t.Errorf("the partial file is still there (%v)", err)
			}
			if tg.part != nil {
				t.Error("the target still holds a partial restore")
			}
			if got := received.Load(); got != tt.received {
				t.Errorf("received %d bytes, want %d", got, tt.received)
			}
		})
	}
}

// TestPartialRestoreRanges: a resume lists at most proto.MaxResumeRanges
// ranges, and keeps to those, so that the server's chunks for the rest
// never overlap what the sink counts as had.
func TestPartialRestoreRanges(t *testing.T) {
	for _, n := range []int{0, 1, proto.MaxResumeRanges, proto.MaxResumeRanges + 6} {
		var p partialRestore
		for i := range n {
			p.have.Add(uint64(10*i), 5)
		}
		rs := p.haveRanges()
		want := min(n, proto.MaxResumeRanges)
		if len(rs) != want || p.have.Total() != uint64(5*want) || len(p.have.Ranges()) != want {
			t.Errorf("%d ranges: listed %d, kept %d bytes in %d; want %d ranges of 5 bytes", n, len(rs), p.have.Total(), len(p.have.Ranges()), want)
		}
		if want > 0 && rs[want-1] != (proto.Range{Off: uint64(10 * (want - 1)), Len: 5}) {
			t.Errorf("%d ranges: the last listed is %v", n, rs[want-1])
		}
	}
}

// TestLostToNetwork: what is kept for a resume is kept across a lost
// connection, not across a server that closed the session for a protocol
// error (which is how one that does not know RestoreResume answers it).
func TestLostToNetwork(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&proto.Error{Code: proto.CodeProtocol, Message: "unknown message type"}, false},
		{fmt.Errorf("wrapped: %w", &proto.Error{Code: proto.CodeProtocol}), false},
		{&proto.Error{Code: proto.CodeShutdown}, true},
		{errSessionClosed, true},
		{fmt.Errorf("lost the connection to the server"), true},
	}
	for _, tt := range tests {
		if got := lostToNetwork(tt.err); got != tt.want {
			t.Errorf("lostToNetwork(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestResumedSinkRefusesOtherContent: a resumed sink takes the server's
// description only if it is the version and content its bytes are part
// of, so that no chunk of anything else lands beside them.
func TestResumedSinkRefusesOtherContent(t *testing.T) {
	sha := sha256.Sum256([]byte("the file"))
	want := proto.RestoreReady{Name: "f", Version: 3, Size: 4 << 20, SHA256: sha}
	tests := []struct {
		name string
		edit func(m *proto.RestoreReady)
		ok   bool
	}{
		{"same", func(*proto.RestoreReady) {}, true},
		{"other version", func(m *proto.RestoreReady) { m.Version = 4 }, false},
		{"other content", func(m *proto.RestoreReady) { m.SHA256[0] ^= 1 }, false},
		{"other size", func(m *proto.RestoreReady) { m.Size++ }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "part"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			p := &partialRestore{f: f, version: want.Version, size: want.Size, sha: sha}
			p.have.Add(0, 1<<20)
			k := resumeSink(p, nil, func(int64) {})
			m := want
			tt.edit(&m)
			err = k.bind(&m)
			if (err == nil) != tt.ok {
				t.Fatalf("bind: %v, want ok %v", err, tt.ok)
			}
			if !tt.ok {
				if err := k.receive(1<<20, []byte("chunk"), nil); err != nil || k.written != 1<<20 {
					t.Errorf("a chunk after the refusal: %v, written %d; want it dropped", err, k.written)
				}
			}
		})
	}
}

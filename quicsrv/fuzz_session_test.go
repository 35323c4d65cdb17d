package quicsrv_test

// FuzzSession drives the server's session state machine (PROTOCOL.md §9,
// §10) with programs of client operations rather than with raw bytes, so
// the fuzzer explores orders of requests, chunks, commits, aborts,
// restores, stream resets and reconnects instead of dying on the first
// parse error. One server and one registered client serve every input;
// each input runs on fresh authenticated connections.
//
// An input is a sequence of operations of fzOpLen bytes each: an opcode
// (modulo fzNumOps) and three arguments; missing bytes read as 0, and at
// most fzMaxOps operations run (see the op constants). Operations on a
// transfer pick it with one argument: below 0xc0 one of the session's
// transfers (0 the most recent), from 0xc0 the number sel-0xc0 whatever it
// is. Each input runs within fzBudget; every wait is bounded.
//
// Invariants, checked for every input:
//   - the server does not panic (that kills the test binary);
//   - every message it sends is consistent with what the client did: an
//     answer per request, transfer numbers odd or even and increasing,
//     missing ranges within the file, an UploadChecksum only once every
//     missing byte was sent and equal to the checksums of what was sent,
//     an UploadResult only after a commit (stored) or abort (discarded), a
//     restore's chunks authentic and equal to what was stored, known
//     versions never changing, no internal errors (Error or log);
//   - a client has at most one unfinished upload per name: an upload
//     request answered ReadySend has taken over the session's older
//     upload of the name (Error 0xc before the answer), unless that
//     upload's commit or abort was sent (PROTOCOL.md §9.3);
//   - a session whose operations were all legal is never closed by the
//     server and gets every answer it is owed; a session that does
//     something the server must refuse deterministically (garbage on the
//     control stream, a forged chunk, a commit before any checksum could
//     exist, ...) is closed with the code PROTOCOL.md gives;
//   - once the client has closed its connections, the server's session
//     count, active uploads, memory budget and open files in use drop to
//     0 within a bounded wait, and after partial uploads expire tmp/ is
//     empty (nothing leaks);
//   - the reference files stored before the fuzzing are unchanged, and
//     (every fzHealthEvery inputs when fuzzing, every fzSeedHealthEvery
//     and at the end when the seed corpus runs as a test) a well-behaved
//     client is served normally, every version known to be stored is
//     intact, and nothing is written outside the data directory.
//
// The server's store keeps what earlier inputs committed, so an input's
// answers (a version number, ReadyUnchanged) can depend on the inputs
// before it; a failure prints the input's whole exchange.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/qbackup/qbackup/store"
)

const (
	fzChunkSize    = 1024 // the server's chunk size: files of a few chunks stay small
	fzMaxFileSize  = 8192 // above the well-behaved client's files (≤ 6000 bytes)
	fzMaxTransfers = 4    // small, so the limit is reachable
	fzOpLen        = 4    // opcode and three arguments
	fzMaxOps       = 32
	fzMaxSessions  = 4 // connections per input

	fzBudget     = 1500 * time.Millisecond // for an input's operations
	fzAnswerWait = 300 * time.Millisecond  // for the answer to a request, within the budget
	fzWriteWait  = 500 * time.Millisecond  // for one write
	fzOwedWait   = 3 * time.Second         // for answers the server owes at the end
	fzCloseWait  = 2 * time.Second         // for a close the server owes
	fzSettleWait = 5 * time.Second         // for sessions to end once the connections closed

	// Inputs between checks that a well-behaved client is served: when
	// fuzzing, and when running the seed corpus as a test (which checks
	// once more at the end).
	fzHealthEvery     = 16
	fzSeedHealthEvery = 4

	fzStoredName = "fz/stored" // stored before the fuzzing; its version 1 must never change
	fzStoredSize = 1000
)

var (
	// Names an UploadRequest or RestoreRequest can use. The first
	// fzValidNames are valid; fzStoredName is stored before the fuzzing.
	fzNames = []string{"fz/a", "fz/b", "fz/dir/c", fzStoredName, "fz/missing", "", "fz/../x"}
	// Sizes: empty, one byte, around the chunk size, several chunks, and
	// one over fzMaxFileSize.
	fzSizes    = []uint64{0, 1, fzStoredSize, fzChunkSize, fzChunkSize + 1, 2 * fzChunkSize, 4000, 9000}
	fzMtimes   = []int64{1714979289123456789, 1714979289123456790, 1600000000000000000, 0}
	fzPrefixes = []string{"", "fz", "fz/dir", "fz/a", "fz/", "../x"}
	fzVersions = []uint32{0, 1, 2, 99}
)

const fzValidNames = 5

func fzValidPrefix(i int) bool { return i != 5 }

// Operations.
const (
	opUpload      = iota // name, size, flags: UploadRequest; waits for the answer
	opChunk              // xfer, mode, param: one chunk frame on the current data stream
	opSendAll            // xfer, flags: every byte not yet sent, in chunks
	opCommit             // xfer, flags: UploadCommit (bit 0: wait for the checksum first)
	opAbort              // xfer: UploadAbort
	opList               // prefix, flags: ListRequest; waits for the answer
	opRestore            // name, version: RestoreRequest; waits for the answer
	opRestoreDone        // xfer, status: RestoreDone
	opGarbage            // kind: a malformed or misplaced control frame
	opStream             // kind: data stream ends, resets, bad types
	opPause              // ms: sleep up to 20 ms
	opSession            // kind: close, finish or reset the connection, or open another
	opSync               // wait for what the server owes
	fzNumOps
)

// Chunk modes (opChunk's second argument, modulo 8).
const (
	chunkNext      = iota // the first piece not yet sent
	chunkLast             // the last piece not yet sent
	chunkAnywhere         // offset and length from the arguments
	chunkTampered         // the next piece, with a flipped bit or sealed wrongly
	chunkReplay           // the last frame sent for the transfer, byte for byte
	chunkResealed         // bytes already sent, sealed afresh
	chunkWrong            // the next piece with other content (authentic)
	chunkMalformed        // a frame the server cannot parse
)

// fzKey names the content a file of this name and size has.
type fzKey struct {
	name int
	size uint64
}

type fzContent struct {
	data []byte
	crc  uint32
	sha  [32]byte
}

// fzHarness is the state shared by every input: the server, the clients
// and what is known to be stored.
type fzHarness struct {
	w        *world
	key      *rsa.PrivateKey // the fuzz client's
	id       [16]byte        // the fuzz client's
	sink     *fzLog
	fuzzing  bool
	iter     int
	content  map[fzKey]*fzContent
	goodSnap map[string]string // the well-behaved client's directory

	mu       sync.Mutex
	versions map[string]map[uint32][32]byte // content of stored versions, by name and version
	mayStore map[string]bool                // names that may have a stored version
}

func FuzzSession(f *testing.F) {
	h := newFzHarness(f)
	f.Cleanup(func() {
		if !h.fuzzing {
			h.healthy(f, true)
		}
	})
	for _, p := range fzSeeds() {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, prog []byte) { h.run(t, prog) })
}

func newFzHarness(tb testing.TB) *fzHarness {
	good, bad := testKeys(tb)
	sink := &fzLog{}
	srv := srvtest.Start(tb, func(s *quicsrv.Server) {
		s.ChunkSize = fzChunkSize
		s.MaxFileSize = fzMaxFileSize
		s.MaxTransfers = fzMaxTransfers
		// Not srvtest's f.Log: F.Log panics inside the fuzz function, and
		// would keep every line of a long run. fzLog passes each line to
		// the running input's t, and checks it.
		s.Logger = slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	fl := flag.Lookup("test.fuzz")
	h := &fzHarness{
		w:        &world{srv: srv, key: good, bad: bad, files: make(map[string][]byte)},
		key:      bad,
		sink:     sink,
		fuzzing:  fl != nil && fl.Value.String() != "",
		content:  make(map[fzKey]*fzContent),
		versions: make(map[string]map[uint32][32]byte),
		mayStore: make(map[string]bool),
	}
	for n := range fzValidNames {
		for _, size := range fzSizes {
			d := seededBytes(byte(0x40+n), int(size))
			h.content[fzKey{n, size}] = &fzContent{data: d, crc: proto.CksumBytes(d), sha: sha256.Sum256(d)}
		}
	}
	// The reference files: one of the well-behaved client's, and the one
	// the fuzz client's requests can find unchanged.
	gc := registered(tb, srv, goodName, good)
	h.w.id = gc.id
	h.w.files["docs/reference.bin"] = seededBytes(0x30, 3000)
	gc.upload("docs/reference.bin", h.w.files["docs/reference.bin"])
	gc.close()
	fc := registered(tb, srv, "fuzz", bad) // the fuzz client: key B under its own name
	h.id = fc.id
	ref := h.content[fzKey{3, fzStoredSize}]
	m := fc.uploadReq(fzStoredName, ref.data)
	m.ModTime = fzMtimes[0]
	fc.send(m)
	rd := expect[*proto.UploadReady](fc)
	fc.sendData(fc.chunkFrames(rd.Xfer, rd.UploadID, ref.data, fzChunkSize)...)
	if res := fc.finishUpload(rd.Xfer, ref.data); res.Status != proto.ResultStored || res.Version != 1 {
		tb.Fatalf("storing %s: %+v", fzStoredName, res)
	}
	fc.close()
	h.versions[fzStoredName] = map[uint32][32]byte{1: ref.sha}
	h.mayStore[fzStoredName] = true
	h.goodSnap = h.goodSnapshot(tb)
	return h
}

// fzLog receives the server's log. It passes each line to the running
// input's t, and reports errors and unexpected warnings as violations.
type fzLog struct {
	mu  sync.Mutex
	run *fzRun
}

// Warnings the server logs for a misbehaving client; any other warning,
// and every error, is a violation.
var fzExpectedWarnings = []string{`msg="closing connection"`, `msg="client received a restore whose checksums did not match; checking the stored version again"`}

func (l *fzLog) set(r *fzRun) {
	l.mu.Lock()
	l.run = r
	l.mu.Unlock()
}

func (l *fzLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.run
	if r == nil {
		return len(p), nil
	}
	line := strings.TrimRight(string(p), "\n")
	r.t.Log(line)
	switch {
	case strings.Contains(line, " level=ERROR "):
		r.violate("the server logged an error: %s", line)
	case strings.Contains(line, " level=WARN "):
		expected := false
		for _, w := range fzExpectedWarnings {
			expected = expected || strings.Contains(line, w)
		}
		if !expected {
			r.violate("the server logged an unexpected warning: %s", line)
		}
	}
	return len(p), nil
}

// fzRun is one input being run.
type fzRun struct {
	h        *fzHarness
	t        *testing.T
	conns    []*fzConn
	cur      *fzConn // where operations go; nil when none is left
	deadline time.Time
	// concurrent is set once two sessions were open at the same time:
	// one may take over the other's uploads (PROTOCOL.md §9.3), so some
	// closes are no longer certain.
	concurrent bool

	mu      sync.Mutex // guards the fields below; taken after an fzConn's mu
	trace   []string
	bad     []string
	tainted map[fzKey]bool // files that were sent bytes other than their content
}

func (r *fzRun) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trace = append(r.trace, fmt.Sprintf(format, args...))
}

func (r *fzRun) violate(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	r.trace = append(r.trace, "VIOLATION: "+msg)
	r.bad = append(r.bad, msg)
}

func (r *fzRun) taint(k fzKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tainted[k] = true
}

func (r *fzRun) isTainted(k fzKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tainted[k]
}

func (r *fzRun) traceText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.trace, "\n")
}

// remaining is what is left of the input's budget, at most d.
func (r *fzRun) remaining(d time.Duration) time.Duration {
	return max(0, min(d, time.Until(r.deadline)))
}

// fzConn is one connection of an input, with what its client knows.
type fzConn struct {
	r *fzRun
	c *rawClient
	n int // 1, 2, ... within the input

	// Guarded by mu: the reader and the restore-chunk consumer update
	// them, the operations read and update them.
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every update
	reqs      map[uint32]*fzReq
	uploads   map[uint32]*fzUp
	upOrder   []uint32
	restores  map[uint32]*fzRest
	restOrder []uint32
	lastUp    uint32 // highest upload transfer number issued
	lastRest  uint32 // highest restore transfer number issued
	early     []rawFrame
	ended     bool  // the reader stopped
	endErr    error // why

	// The operations' goroutine only.
	legal      bool // every operation so far was legal (the server must not close)
	dead       bool // no more operations go to this connection
	judged     bool // the end of the connection was checked
	closedByUs bool
	finSent    bool
	ctrlReset  bool
	expect     *proto.ErrorCode // the close a refused operation must cause
	expectWhy  string
	data       *quic.SendStream
	dataUps    []*fzUp            // uploads with frames on data
	silent     []*quic.SendStream // data streams left open
	readerDone chan struct{}
	chunksDone chan struct{}
}

// fzReq is a request the client sent.
type fzReq struct {
	kind     byte // 'u' upload, 'l' list, 'r' restore
	name     int  // index in fzNames, or fzPrefixes for a list
	size     uint64
	mtime    int64
	hashed   bool
	sumsOK   bool // with hashed: the checksums are those of the content
	version  uint32
	answered bool
	entries  int
	lastName string
}

// fzUp is an upload the server accepted (ReadySend).
type fzUp struct {
	req        uint32
	xfer       uint32
	id         [16]byte
	key        fzKey
	missing    []proto.Range
	sent       proto.RangeSet // bytes within the file sent in authentic frames
	uncertain  bool           // a frame may not have reached the server
	lastFrame  []byte
	commitSent bool
	abortSent  bool
	ck         *proto.UploadChecksum
	result     *proto.UploadResult
	err        *proto.ErrorMessage

	// replaced is set once a newer request of the session for the name
	// was sent: the server may have taken the upload over (Error 0xc),
	// so what it must refuse of it is no longer certain.
	replaced bool
}

func (u *fzUp) over() bool { return u.result != nil || u.err != nil }

// live reports whether the server certainly still has the upload open,
// receiving or checking (no commit, abort or end can have reached it).
func (u *fzUp) live() bool { return !u.over() && !u.commitSent && !u.abortSent }

// fzRest is a restore the server accepted.
type fzRest struct {
	rr       *proto.RestoreReady
	released bool
	got      proto.RangeSet
	buf      []byte // nil for a file too large to keep
}

func (h *fzHarness) run(t *testing.T, prog []byte) {
	h.iter++
	r := &fzRun{h: h, t: t, deadline: time.Now().Add(fzBudget), tainted: make(map[fzKey]bool)}
	h.sink.set(r)
	defer h.sink.set(nil)
	r.connect()
	for i := 0; i < fzMaxOps && i*fzOpLen < len(prog); i++ {
		var op [fzOpLen]byte
		copy(op[:], prog[i*fzOpLen:])
		if time.Now().After(r.deadline) {
			r.note("budget of %v used up", fzBudget)
			break
		}
		r.step(i, op)
	}
	r.finish()
	r.mu.Lock()
	bad := r.bad
	r.mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("input %x:\n%s\n\n%d violations:\n%s", prog, r.traceText(), len(bad), strings.Join(bad, "\n"))
	}
	h.settle(t, r)
	every := fzSeedHealthEvery
	if h.fuzzing {
		every = fzHealthEvery
	}
	if h.iter%every == 1 {
		h.healthy(t, false)
	}
	r.mu.Lock()
	bad = r.bad[len(bad):]
	r.mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("input %x, after the connections closed:\n%s", prog, strings.Join(bad, "\n"))
	}
}

// connect opens a new session of the fuzz client and makes it current.
func (r *fzRun) connect() {
	if len(r.conns) >= fzMaxSessions {
		r.cur = nil
		r.note("no session left")
		return
	}
	for _, o := range r.conns {
		if !o.dead {
			r.concurrent = true
		}
	}
	c := dialRaw(r.t, r.h.w.srv)
	c.reconnect(r.h.id, r.h.key)
	c.ctrl.SetReadDeadline(time.Time{})
	c.acceptData()
	fc := &fzConn{
		r: r, c: c, n: len(r.conns) + 1,
		changed:    make(chan struct{}),
		reqs:       make(map[uint32]*fzReq),
		uploads:    make(map[uint32]*fzUp),
		restores:   make(map[uint32]*fzRest),
		legal:      true,
		readerDone: make(chan struct{}),
		chunksDone: make(chan struct{}),
	}
	r.conns = append(r.conns, fc)
	r.cur = fc
	r.note("s%d: connected", fc.n)
	go fc.readLoop()
	go fc.chunkLoop()
}

// step runs one operation.
func (r *fzRun) step(i int, op [fzOpLen]byte) {
	kind, a, b, c := int(op[0])%fzNumOps, op[1], op[2], op[3]
	if r.cur != nil {
		r.cur.checkEnded()
	}
	fc := r.cur
	if kind != opPause && (fc == nil || fc.dead) && kind != opSession {
		r.note("#%d op %d: no live connection", i, kind)
		return
	}
	switch kind {
	case opUpload:
		fc.upload(i, a, b, c)
	case opChunk:
		fc.chunk(i, a, b, c)
	case opSendAll:
		fc.sendAll(i, a, b)
	case opCommit:
		fc.commit(i, a, b)
	case opAbort:
		fc.abort(i, a)
	case opList:
		fc.list(i, a, b)
	case opRestore:
		fc.restore(i, a, b)
	case opRestoreDone:
		fc.restoreDone(i, a, b)
	case opGarbage:
		fc.garbage(i, a)
	case opStream:
		fc.stream(i, a)
	case opPause:
		d := r.remaining(time.Duration(a%21) * time.Millisecond)
		r.note("#%d pause %v", i, d)
		time.Sleep(d)
	case opSession:
		r.session(i, a)
	case opSync:
		fc.waitOwed(r.remaining(fzAnswerWait))
		r.note("#%d sync", i)
	}
}

// finish checks each connection's end, waits for what the server owes a
// legal session, and closes everything.
func (r *fzRun) finish() {
	for _, fc := range r.conns {
		fc.checkEnded()
		if fc.dead || !fc.legal {
			continue
		}
		if owed := fc.waitOwed(fzOwedWait); len(owed) > 0 {
			r.violate("s%d: the server still owes %s after %v", fc.n, strings.Join(owed, ", "), fzOwedWait)
		}
		fc.checkEnded()
	}
	for _, fc := range r.conns {
		if !fc.judged {
			fc.closedByUs = true
			fc.c.close()
		}
		fc.dead = true
	}
	for _, fc := range r.conns {
		fc.c.close()
		select {
		case <-fc.readerDone:
		case <-time.After(fzCloseWait):
			r.violate("s%d: reading the control stream did not end after the close", fc.n)
		}
		select {
		case <-fc.chunksDone:
		case <-time.After(fzCloseWait):
			r.violate("s%d: reading restore chunks did not end after the close", fc.n)
		}
	}
}

// settle waits for the server to end every session and release every
// upload, expires the partial uploads kept for resume, and checks the
// reference files.
func (h *fzHarness) settle(t *testing.T, r *fzRun) {
	srv := h.w.srv
	deadline := time.Now().Add(fzSettleWait)
	for {
		n, u, b := quicsrv.SessionCount(srv.Srv), quicsrv.ActiveUploads(srv.Srv), quicsrv.BudgetInUse(srv.Srv)
		f := quicsrv.FilesInUse(srv.Srv)
		if n == 0 && u == 0 && b == 0 && f == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, %d active uploads, %d bytes of the memory budget and %d open files left %v after the client closed its connections:\n%s",
				n, u, b, f, fzSettleWait, r.traceText())
		}
		time.Sleep(time.Millisecond)
	}
	tmpEmpty(t, srv)
	h.checkReference(t, fzStoredName, 1)
	if got := h.goodSnapshot(t); !mapsEqual(got, h.goodSnap) {
		t.Fatalf("the well-behaved client's files changed: was %v, now %v", h.goodSnap, got)
	}
}

// healthy checks that a well-behaved client is served (and with all,
// that it can restore every file it stored), that every version the fuzz
// client is known to have stored is intact, and that nothing was written
// outside the data directory.
func (h *fzHarness) healthy(t testing.TB, all bool) {
	t.Helper()
	h.w.healthy(t)
	h.goodSnap = h.goodSnapshot(t)
	if all {
		h.w.restoreAll(t)
	} else {
		checkContained(t, h.w.srv.Dir)
	}
	h.mu.Lock()
	type nv struct {
		name string
		v    uint32
	}
	var known []nv
	for name, vs := range h.versions {
		for v := range vs {
			known = append(known, nv{name, v})
		}
	}
	h.mu.Unlock()
	for _, k := range known {
		h.checkReference(t, k.name, k.v)
	}
}

// checkReference requires version v of the fuzz client's file name to hold
// the content it is known to have.
func (h *fzHarness) checkReference(t testing.TB, name string, v uint32) {
	t.Helper()
	h.mu.Lock()
	want, ok := h.versions[name][v]
	h.mu.Unlock()
	if !ok {
		return
	}
	ctx := context.Background()
	st := h.w.srv.Store
	fv, err := st.Version(ctx, store.ClientID(h.id), name, int(v))
	if err != nil {
		t.Fatalf("version %d of %q: %v", v, name, err)
	}
	f, err := st.OpenVersion(ctx, store.ClientID(h.id), fv)
	if err != nil {
		t.Fatalf("opening version %d of %q: %v", v, name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("reading version %d of %q: %v", v, name, err)
	}
	if sha256.Sum256(b) != want || fv.SHA256 != want || fv.Size != int64(len(b)) || fv.CRC != proto.CksumBytes(b) {
		t.Fatalf("version %d of %q changed: %d bytes, recorded %+v", v, name, len(b), fv)
	}
}

// goodSnapshot hashes every file of the well-behaved client.
func (h *fzHarness) goodSnapshot(tb testing.TB) map[string]string {
	tb.Helper()
	root := filepath.Join(h.w.srv.Dir, "clients", store.ClientID(h.w.id).String())
	out := make(map[string]string)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	if err != nil {
		tb.Fatalf("walking %s: %v", root, err)
	}
	return out
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// ---- The reader side: what the server sends ----

func (fc *fzConn) notifyLocked() {
	close(fc.changed)
	fc.changed = make(chan struct{})
}

func (fc *fzConn) readLoop() {
	defer close(fc.readerDone)
	for {
		m, err := fc.c.mr.Read()
		fc.mu.Lock()
		if err != nil {
			fc.ended, fc.endErr = true, err
			fc.notifyLocked()
			fc.mu.Unlock()
			return
		}
		fc.handleLocked(m)
		fc.notifyLocked()
		fc.mu.Unlock()
	}
}

// handleLocked checks one message from the server against what the client
// did, and records it.
func (fc *fzConn) handleLocked(m proto.Message) {
	r, h := fc.r, fc.r.h
	r.note("s%d ← %v %+v", fc.n, m.Type(), m)
	switch m := m.(type) {
	case *proto.UploadReady:
		rq := fc.reqs[m.Req]
		if rq == nil || rq.kind != 'u' || rq.answered {
			r.violate("s%d: UploadReady for req %d, which is no open upload request", fc.n, m.Req)
			return
		}
		rq.answered = true
		if rq.name >= fzValidNames {
			r.violate("s%d: UploadReady for the invalid name %q", fc.n, fzNames[rq.name])
			return
		}
		name := fzNames[rq.name]
		if m.Status == proto.ReadyUnchanged {
			if m.Xfer != 0 || m.UploadID != ([16]byte{}) || len(m.Missing) != 0 || m.Version == 0 {
				r.violate("s%d: malformed ReadyUnchanged %+v", fc.n, m)
			}
			h.mu.Lock()
			may := h.mayStore[name]
			sha, known := h.versions[name][m.Version]
			h.mu.Unlock()
			switch {
			case !may:
				r.violate("s%d: ReadyUnchanged for %q, which was never stored", fc.n, name)
			case rq.hashed && !rq.sumsOK:
				r.violate("s%d: ReadyUnchanged for %q with checksums no content has", fc.n, name)
			case rq.hashed && known && sha != h.content[fzKey{rq.name, rq.size}].sha:
				r.violate("s%d: ReadyUnchanged for %q: version %d holds other content", fc.n, name, m.Version)
			}
			return
		}
		// Upload requests may be handled concurrently, so numbers need not
		// arrive in order; each is odd and issued once.
		if m.Xfer%2 != 1 {
			r.violate("s%d: upload transfer %d; want an odd number", fc.n, m.Xfer)
		}
		fc.lastUp = max(fc.lastUp, m.Xfer)
		if m.UploadID == ([16]byte{}) {
			r.violate("s%d: upload ID all zeros", fc.n)
		}
		if rq.size > fzMaxFileSize {
			r.violate("s%d: accepted an upload of %d bytes, over the limit of %d", fc.n, rq.size, fzMaxFileSize)
		}
		for _, rg := range m.Missing {
			if rg.Off+rg.Len > rq.size {
				r.violate("s%d: missing range %+v beyond the %d-byte file", fc.n, rg, rq.size)
			}
		}
		if _, dup := fc.uploads[m.Xfer]; dup {
			r.violate("s%d: transfer %d issued twice", fc.n, m.Xfer)
			return
		}
		for _, u := range fc.uploads {
			if u.key.name == rq.name && u.live() {
				r.violate("s%d: transfer %d of %q is still open after a newer request for the name got transfer %d; want it taken over (Error 0xc)",
					fc.n, u.xfer, name, m.Xfer)
			}
		}
		fc.uploads[m.Xfer] = &fzUp{req: m.Req, xfer: m.Xfer, id: m.UploadID, key: fzKey{rq.name, rq.size}, missing: m.Missing}
		fc.upOrder = append(fc.upOrder, m.Xfer)

	case *proto.UploadChecksum:
		u := fc.uploads[m.Xfer]
		switch {
		case u == nil:
			fc.unknownXferLocked(m)
			return
		case u.ck != nil:
			r.violate("s%d: second UploadChecksum for transfer %d", fc.n, m.Xfer)
		case u.over():
			r.violate("s%d: UploadChecksum for transfer %d after it ended", fc.n, m.Xfer)
		case !coversAll(&u.sent, u.missing):
			r.violate("s%d: UploadChecksum for transfer %d before every missing byte was sent (sent %v of %v)",
				fc.n, m.Xfer, u.sent.Ranges(), u.missing)
		}
		u.ck = m
		if want := h.content[u.key]; !r.isTainted(u.key) && (m.CRC != want.crc || m.SHA256 != want.sha) {
			r.violate("s%d: UploadChecksum for transfer %d (%q, %d bytes) is not that of the content sent",
				fc.n, m.Xfer, fzNames[u.key.name], u.key.size)
		}

	case *proto.UploadResult:
		u := fc.uploads[m.Xfer]
		if u == nil {
			fc.unknownXferLocked(m)
			return
		}
		if u.over() {
			r.violate("s%d: UploadResult for transfer %d, which already ended", fc.n, m.Xfer)
		}
		u.result = m
		name := fzNames[u.key.name]
		switch m.Status {
		case proto.ResultDiscarded:
			if !u.abortSent {
				r.violate("s%d: transfer %d discarded without an abort", fc.n, m.Xfer)
			}
			if m.Version != 0 || m.StoredAt != 0 {
				r.violate("s%d: discarded transfer %d with version %d, storedAt %d", fc.n, m.Xfer, m.Version, m.StoredAt)
			}
		default:
			switch {
			case !u.commitSent:
				r.violate("s%d: transfer %d stored without a commit", fc.n, m.Xfer)
			case u.ck == nil:
				r.violate("s%d: transfer %d stored before its UploadChecksum", fc.n, m.Xfer)
			case m.Version == 0:
				r.violate("s%d: transfer %d stored as version 0", fc.n, m.Xfer)
			default:
				h.mu.Lock()
				vs := h.versions[name]
				if vs == nil {
					vs = make(map[uint32][32]byte)
					h.versions[name] = vs
				}
				old, known := vs[m.Version]
				vs[m.Version] = u.ck.SHA256
				h.mu.Unlock()
				if known && (old != u.ck.SHA256 || m.Status == proto.ResultStored) {
					r.violate("s%d: transfer %d stored as version %d of %q (status %d), which existed with other content",
						fc.n, m.Xfer, m.Version, name, m.Status)
				}
			}
		}

	case *proto.ErrorMessage:
		if m.Message == "" || len(m.Message) > 256 || !utf8.ValidString(m.Message) {
			r.violate("s%d: Error with message %q", fc.n, m.Message)
		}
		if rq := fc.reqs[m.Req]; rq != nil && !rq.answered {
			rq.answered = true
			fc.checkRefusalLocked(rq, m)
			return
		}
		for _, u := range fc.uploads {
			if u.req == m.Req && !u.over() {
				u.err = m
				if m.Code != proto.CodeAborted {
					r.violate("s%d: upload transfer %d failed on the server: %v", fc.n, u.xfer, m.Err())
				}
				return
			}
		}
		r.violate("s%d: Error for req %d, which has nothing open: %v", fc.n, m.Req, m.Err())

	case *proto.ListEntry:
		rq := fc.reqs[m.Req]
		if rq == nil || rq.kind != 'l' || rq.answered {
			r.violate("s%d: ListEntry for req %d, which is no open listing", fc.n, m.Req)
			return
		}
		rq.entries++
		if m.Name < rq.lastName || !m.Verified || m.Version == 0 || m.Version > m.Versions {
			r.violate("s%d: ListEntry %+v after %q", fc.n, m, rq.lastName)
		}
		rq.lastName = m.Name
		h.mu.Lock()
		sha, known := h.versions[m.Name][m.Version]
		h.mu.Unlock()
		if known && sha != m.SHA256 {
			r.violate("s%d: listed version %d of %q with other content", fc.n, m.Version, m.Name)
		}

	case *proto.ListEnd:
		rq := fc.reqs[m.Req]
		if rq == nil || rq.kind != 'l' || rq.answered {
			r.violate("s%d: ListEnd for req %d, which is no open listing", fc.n, m.Req)
			return
		}
		rq.answered = true
		if int(m.Count) != rq.entries {
			r.violate("s%d: ListEnd counts %d entries, %d were sent", fc.n, m.Count, rq.entries)
		}
		if !fzValidPrefix(rq.name) {
			r.violate("s%d: listed the invalid prefix %q", fc.n, fzPrefixes[rq.name])
		}

	case *proto.RestoreReady:
		rq := fc.reqs[m.Req]
		if rq == nil || rq.kind != 'r' || rq.answered {
			r.violate("s%d: RestoreReady for req %d, which is no open restore request", fc.n, m.Req)
			return
		}
		rq.answered = true
		name := fzNames[rq.name]
		if m.Name != name || (rq.version != 0 && m.Version != rq.version) || m.Version == 0 {
			r.violate("s%d: RestoreReady for %q version %d; asked for %q version %d", fc.n, m.Name, m.Version, name, rq.version)
		}
		if m.Xfer == 0 || m.Xfer%2 != 0 {
			r.violate("s%d: restore transfer %d; want an even number", fc.n, m.Xfer)
		}
		fc.lastRest = max(fc.lastRest, m.Xfer)
		if m.TransferID == ([16]byte{}) {
			r.violate("s%d: restore transfer ID all zeros", fc.n)
		}
		h.mu.Lock()
		sha, known := h.versions[m.Name][m.Version]
		h.mu.Unlock()
		if known && sha != m.SHA256 {
			r.violate("s%d: RestoreReady for version %d of %q with other content", fc.n, m.Version, m.Name)
		}
		if _, dup := fc.restores[m.Xfer]; dup {
			r.violate("s%d: restore transfer %d issued twice", fc.n, m.Xfer)
			return
		}
		rs := &fzRest{rr: m}
		if m.Size <= 1<<20 {
			rs.buf = make([]byte, m.Size)
		}
		fc.restores[m.Xfer] = rs
		fc.restOrder = append(fc.restOrder, m.Xfer)
		if m.Size == 0 {
			fc.restoreCompleteLocked(rs)
		}
		early := fc.early
		fc.early = nil
		for _, f := range early {
			fc.restoreChunkLocked(f)
		}

	default:
		r.violate("s%d: unexpected %v in a session", fc.n, m.Type())
	}
}

// unknownXferLocked handles a message about an upload transfer the client
// has no UploadReady for. That is wrong unless an upload request is still
// unanswered: its UploadReady may be on its way, and an operation that
// guessed the number may have drawn this answer first.
func (fc *fzConn) unknownXferLocked(m proto.Message) {
	for _, rq := range fc.reqs {
		if rq.kind == 'u' && !rq.answered {
			fc.r.note("s%d: %v for a transfer not known yet", fc.n, m.Type())
			return
		}
	}
	fc.r.violate("s%d: %v %+v for a transfer that is no upload", fc.n, m.Type(), m)
}

// checkRefusalLocked checks an Error that answers a request: its code
// must be the first that applies in the order PROTOCOL.md gives (§5.6 for
// uploads: name, then ReadyUnchanged, size, quotas, draining, transfers;
// §5.15 for restores).
func (fc *fzConn) checkRefusalLocked(rq *fzReq, m *proto.ErrorMessage) {
	r := fc.r
	ok := false
	switch rq.kind {
	case 'u':
		valid := rq.name < fzValidNames
		switch m.Code {
		case proto.CodeInvalidName:
			ok = !valid
		case proto.CodeTooLarge:
			ok = valid && rq.size > fzMaxFileSize
		case proto.CodeLimit: // too many transfers
			ok = valid && rq.size <= fzMaxFileSize
		}
	case 'r':
		valid := rq.name < fzValidNames
		switch m.Code {
		case proto.CodeInvalidName:
			ok = !valid
		case proto.CodeNotFound:
			ok = valid && !(fzNames[rq.name] == fzStoredName && rq.version <= 1)
		case proto.CodeLimit:
			ok = valid
		}
	case 'l':
		ok = m.Code == proto.CodeInvalidName && !fzValidPrefix(rq.name) && rq.entries == 0
	}
	if !ok {
		r.violate("s%d: request %+v refused with %v", fc.n, *rq, m.Err())
	}
}

// chunkLoop checks the restore chunks the server sends.
func (fc *fzConn) chunkLoop() {
	defer close(fc.chunksDone)
	ctx := fc.c.conn.Context()
	for {
		select {
		case f := <-fc.c.frames:
			fc.mu.Lock()
			fc.restoreChunkLocked(f)
			fc.mu.Unlock()
		case <-ctx.Done():
			return
		}
	}
}

func (fc *fzConn) restoreChunkLocked(f rawFrame) {
	r := fc.r
	if f.err != nil {
		var pe *proto.ParseError
		if errors.As(f.err, &pe) || strings.Contains(f.err.Error(), "data stream of type") {
			r.violate("s%d: %v", fc.n, f.err)
		}
		return
	}
	x := f.h.Xfer
	rs := fc.restores[x]
	if rs == nil {
		switch {
		case x == 0 || x%2 == 1:
			r.violate("s%d: restore chunk for transfer %d, which is no restore", fc.n, x)
		case x > fc.lastRest && len(fc.early) < 64:
			fc.early = append(fc.early, f) // ahead of its RestoreReady
		}
		return
	}
	if rs.released {
		return
	}
	p, err := fc.c.opener.Open(nil, &f.h, &rs.rr.TransferID, f.ct)
	if err != nil {
		r.violate("s%d: restore chunk [%d,+%d) of transfer %d: %v", fc.n, f.h.Offset, f.h.Length, x, err)
		return
	}
	n := uint64(len(p))
	if f.h.Offset > rs.rr.Size || n > rs.rr.Size-f.h.Offset {
		r.violate("s%d: restore chunk [%d,+%d) beyond the %d-byte file", fc.n, f.h.Offset, n, rs.rr.Size)
		return
	}
	if err := rs.got.Add(f.h.Offset, n); err != nil {
		r.violate("s%d: restore transfer %d: %v", fc.n, x, err)
		return
	}
	if rs.buf != nil {
		copy(rs.buf[f.h.Offset:], p)
	}
	if rs.got.Covers(rs.rr.Size) {
		fc.restoreCompleteLocked(rs)
	}
}

func (fc *fzConn) restoreCompleteLocked(rs *fzRest) {
	if rs.buf == nil {
		return
	}
	if proto.CksumBytes(rs.buf) != rs.rr.CRC || sha256.Sum256(rs.buf) != rs.rr.SHA256 {
		fc.r.violate("s%d: restored %q version %d does not match its RestoreReady", fc.n, rs.rr.Name, rs.rr.Version)
	}
}

// ---- The operations ----

// owedLocked lists the answers the server owes the session.
func (fc *fzConn) owedLocked() []string {
	var owed []string
	for req, rq := range fc.reqs {
		if !rq.answered {
			owed = append(owed, fmt.Sprintf("the answer to req %d", req))
		}
	}
	for x, u := range fc.uploads {
		switch {
		case u.over():
		case u.commitSent && u.ck != nil, u.abortSent:
			owed = append(owed, fmt.Sprintf("the UploadResult of transfer %d", x))
		case !u.commitSent && u.ck == nil && !u.uncertain && coversAll(&u.sent, u.missing):
			owed = append(owed, fmt.Sprintf("the UploadChecksum of transfer %d", x))
		}
	}
	return owed
}

// waitOwed waits up to d for the server to send what it owes, and returns
// what it still owes.
func (fc *fzConn) waitOwed(d time.Duration) []string {
	var owed []string
	fc.waitFor(d, func() bool {
		owed = fc.owedLocked()
		return len(owed) == 0
	})
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.ended {
		return nil
	}
	return fc.owedLocked()
}

// waitFor waits up to d for cond, evaluated with mu held, or for the
// connection to end.
func (fc *fzConn) waitFor(d time.Duration, cond func() bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		fc.mu.Lock()
		ok, ended, ch := cond(), fc.ended, fc.changed
		fc.mu.Unlock()
		if ok {
			return true
		}
		if ended {
			return false
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

// checkEnded judges the end of the connection if it has ended.
func (fc *fzConn) checkEnded() {
	fc.mu.Lock()
	ended, err := fc.ended, fc.endErr
	fc.mu.Unlock()
	if !ended || fc.judged {
		return
	}
	fc.judged, fc.dead = true, true
	if fc.closedByUs {
		return
	}
	r := fc.r
	var ae *quic.ApplicationError
	var pe *proto.ParseError
	switch {
	case errors.As(err, &ae) && ae.Remote:
		code := proto.ErrorCode(ae.ErrorCode)
		r.note("s%d: the server closed the connection with %v: %s", fc.n, code, ae.ErrorMessage)
		if len(ae.ErrorMessage) > 256 || !utf8.ValidString(ae.ErrorMessage) || (code != proto.CodeNoError && ae.ErrorMessage == "") {
			r.violate("s%d: close reason %q", fc.n, ae.ErrorMessage)
		}
		switch {
		case fc.expect != nil:
			if code != *fc.expect {
				r.violate("s%d: closed with %v (%s) after %s; want %v", fc.n, code, ae.ErrorMessage, fc.expectWhy, *fc.expect)
			}
		case code == proto.CodeNoError:
			if !fc.finSent {
				r.violate("s%d: closed with %v though the client did not end the session", fc.n, code)
			}
		case fc.legal:
			r.violate("s%d: a session that did nothing wrong was closed with %v: %s", fc.n, code, ae.ErrorMessage)
		case code == proto.CodeProtocol, code == proto.CodeBadChunk:
		case code == proto.CodeInternal && fc.ctrlReset:
		default:
			r.violate("s%d: closed with %v: %s", fc.n, code, ae.ErrorMessage)
		}
	case errors.As(err, &pe):
		r.violate("s%d: malformed message from the server: %v", fc.n, err)
	case err == io.EOF:
		if !fc.finSent {
			r.violate("s%d: the server finished the control stream", fc.n)
		}
	default:
		r.violate("s%d: the connection ended: %v", fc.n, err)
	}
}

// illegal records that the session did something the server may refuse.
// If the server must refuse it (code not nil) and the session was legal
// so far, the server must close the connection with code: wait for that.
func (fc *fzConn) illegal(code *proto.ErrorCode, why string) {
	r := fc.r
	if code == nil || !fc.legal {
		if fc.legal {
			r.note("s%d: not legal from here: %s", fc.n, why)
		}
		fc.legal = false
		return
	}
	fc.legal = false
	fc.expect, fc.expectWhy = code, why
	fc.dead = true
	r.note("s%d: %s: expecting a close with %v", fc.n, why, *code)
	fc.waitFor(fzCloseWait, func() bool { return false })
	fc.mu.Lock()
	ended := fc.ended
	fc.mu.Unlock()
	if !ended {
		r.violate("s%d: the connection is still open %v after %s; want a close with %v", fc.n, fzCloseWait, why, *code)
		return
	}
	fc.checkEnded()
}

func code(c proto.ErrorCode) *proto.ErrorCode { return &c }

// write sends bytes on the control stream.
func (fc *fzConn) write(b []byte) {
	fc.c.ctrl.SetWriteDeadline(time.Now().Add(fzWriteWait))
	if _, err := fc.c.ctrl.Write(b); err != nil {
		fc.r.note("s%d: write on the control stream: %v", fc.n, err)
	}
}

func (fc *fzConn) send(m proto.Message) { fc.write(proto.AppendMessage(nil, m)) }

func (fc *fzConn) addReq(rq *fzReq) uint32 {
	req := fc.c.nextReq()
	fc.mu.Lock()
	fc.reqs[req] = rq
	fc.mu.Unlock()
	return req
}

func (fc *fzConn) waitAnswer(rq *fzReq) {
	fc.waitFor(fc.r.remaining(fzAnswerWait), func() bool { return rq.answered })
}

func (fc *fzConn) upload(i int, a, b, c byte) {
	n, size := int(a)%len(fzNames), fzSizes[int(b)%len(fzSizes)]
	rq := &fzReq{kind: 'u', name: n, size: size, mtime: fzMtimes[int(c>>2)%len(fzMtimes)],
		hashed: c&1 != 0, sumsOK: c&2 == 0}
	m := &proto.UploadRequest{Name: fzNames[n], Size: size, ModTime: rq.mtime, Mode: 0o640}
	if c&0x10 != 0 {
		m.Mode = 0o600
	}
	if rq.hashed {
		m.Flags = proto.FlagHashed
		if ct := fc.r.h.content[fzKey{n, size}]; ct != nil {
			m.CRC, m.SHA256 = ct.crc, ct.sha
		}
		if !rq.sumsOK {
			m.CRC ^= 1
			m.SHA256[0] ^= 1
		}
	}
	m.Req = fc.addReq(rq)
	fc.mu.Lock()
	for _, u := range fc.uploads {
		if u.key.name == n && !u.over() {
			u.replaced = true
		}
	}
	fc.mu.Unlock()
	fc.r.note("#%d s%d upload req %d %q size %d mtime %d flags %#x", i, fc.n, m.Req, m.Name, m.Size, m.ModTime, m.Flags)
	fc.send(m)
	fc.waitAnswer(rq)
}

// pickUpload chooses a transfer for an operation on an upload: one of the
// session's uploads (the most recent for sel 0), or with sel ≥ 0xc0 the
// number sel-0xc0 whatever it is. ok is false if there is none to pick.
func (fc *fzConn) pickUpload(sel byte) (x uint32, u *fzUp, ok bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if sel >= 0xc0 {
		x = uint32(sel - 0xc0)
		return x, fc.uploads[x], true
	}
	if len(fc.upOrder) == 0 {
		return 0, nil, false
	}
	x = fc.upOrder[len(fc.upOrder)-1-int(sel)%len(fc.upOrder)]
	return x, fc.uploads[x], true
}

func (fc *fzConn) pickRestore(sel byte) (x uint32, rs *fzRest, ok bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if sel >= 0xc0 {
		x = uint32(sel - 0xc0)
		return x, fc.restores[x], true
	}
	if len(fc.restOrder) == 0 {
		return 0, nil, false
	}
	x = fc.restOrder[len(fc.restOrder)-1-int(sel)%len(fc.restOrder)]
	return x, fc.restores[x], true
}

// notIssuedLocked reports whether x is certainly no transfer the server
// issued to this session: 0, of the other kind, or above the last number
// issued while every request was answered.
func (fc *fzConn) notIssuedLocked(x uint32, restore bool) bool {
	if x == 0 || (x%2 == 0) != restore {
		return true
	}
	for _, rq := range fc.reqs {
		if !rq.answered && (rq.kind == 'r') == restore && rq.kind != 'l' {
			return false
		}
	}
	if restore {
		return x > fc.lastRest
	}
	return x > fc.lastUp
}

// gapsLocked returns the missing ranges of u not yet sent.
func gapsLocked(u *fzUp) []proto.Range {
	var out []proto.Range
	sent := u.sent.Ranges()
	for _, m := range u.missing {
		off, end := m.Off, m.Off+m.Len
		for _, s := range sent {
			if s.Off+s.Len <= off || s.Off >= end {
				continue
			}
			if s.Off > off {
				out = append(out, proto.Range{Off: off, Len: s.Off - off})
			}
			off = max(off, s.Off+s.Len)
		}
		if off < end {
			out = append(out, proto.Range{Off: off, Len: end - off})
		}
	}
	return out
}

// coversAll reports whether s holds every byte of rs.
func coversAll(s *proto.RangeSet, rs []proto.Range) bool {
	have := s.Ranges()
	for _, r := range rs {
		ok := false
		for _, h := range have {
			if h.Off <= r.Off && r.Off+r.Len <= h.Off+h.Len {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// inside reports whether [off, off+n) lies within the union of rs.
func inside(rs []proto.Range, off, n uint64) bool {
	end := off + n
	for _, r := range rs {
		if r.Off <= off && off < r.Off+r.Len {
			off = r.Off + r.Len
			if off >= end {
				return true
			}
		}
	}
	return false
}

func overlaps(s *proto.RangeSet, off, n uint64) bool {
	for _, r := range s.Ranges() {
		if r.Off < off+n && off < r.Off+r.Len {
			return true
		}
	}
	return false
}

// pieceLen is a chunk length chosen by p: the chunk size for 0.
func pieceLen(p byte) uint64 {
	if p == 0 {
		return fzChunkSize
	}
	return min(fzChunkSize, 1+uint64(p)*5)
}

// plaintext is the bytes [off, off+n) of the file k, other bytes where the
// file ends (or all of them with wrong).
func (fc *fzConn) plaintext(k fzKey, off, n uint64, wrong bool) []byte {
	p := make([]byte, n)
	var d []byte
	if ct := fc.r.h.content[k]; ct != nil {
		d = ct.data
	}
	for j := range p {
		if o := off + uint64(j); o < uint64(len(d)) {
			p[j] = d[o]
		} else {
			p[j] = byte(o*7 + 3)
		}
		if wrong {
			p[j] ^= 0x5a
		}
	}
	return p
}

func (fc *fzConn) seal(x uint32, id [16]byte, off uint64, p []byte) []byte {
	f, err := fc.c.sealer.AppendFrame(nil, x, &id, off, p)
	if err != nil {
		fc.r.t.Fatalf("seal: %v", err)
	}
	return f
}

// sendFrame writes a chunk frame on the current data stream, opening one
// if there is none. The bytes of u it carries count as possibly lost if
// the write fails.
func (fc *fzConn) sendFrame(frame []byte, u *fzUp) {
	if fc.data == nil {
		s, err := fc.c.conn.OpenUniStream()
		if err != nil {
			fc.r.note("s%d: no data stream: %v", fc.n, err)
			fc.lost(u)
			return
		}
		fc.data, fc.dataUps = s, nil
		s.SetWriteDeadline(time.Now().Add(fzWriteWait))
		if _, err := s.Write([]byte{proto.StreamTypeChunks}); err != nil {
			fc.r.note("s%d: writing a data stream: %v", fc.n, err)
			fc.lost(u)
			return
		}
	}
	if u != nil {
		fc.dataUps = append(fc.dataUps, u)
	}
	fc.data.SetWriteDeadline(time.Now().Add(fzWriteWait))
	if _, err := fc.data.Write(frame); err != nil {
		fc.r.note("s%d: writing a data stream: %v", fc.n, err)
		fc.data.CancelWrite(0)
		fc.lostStream()
	}
}

func (fc *fzConn) lost(u *fzUp) {
	if u != nil {
		fc.mu.Lock()
		u.uncertain = true
		fc.mu.Unlock()
	}
}

// lostStream forgets the current data stream after a reset: the server
// may or may not have read what was on it.
func (fc *fzConn) lostStream() {
	fc.mu.Lock()
	for _, u := range fc.dataUps {
		u.uncertain = true
	}
	fc.mu.Unlock()
	fc.data, fc.dataUps = nil, nil
}

// sendPiece sends bytes [off, off+n) of upload u, sealed properly, and
// records them as sent. A chunk the server may refuse makes the session
// illegal; one it must refuse is waited for.
func (fc *fzConn) sendPiece(i int, u *fzUp, off, n uint64, wrong bool, what string) {
	fc.mu.Lock()
	legal := fc.chunkLegalLocked(u, off, n)
	// The server must refuse an out-of-place chunk of an upload it still
	// has open, unless another session or a newer request could have
	// taken it over or a lost frame may not have reserved its bytes.
	must := !legal && u.live() && !u.uncertain && !u.replaced && !fc.r.concurrent
	// Whether legal or not, the server may write the chunk (an abort or
	// commit can reach it after the data stream did): it counts as sent,
	// unless it overlaps (then the server refuses it whole).
	if n > 0 && off+n <= u.key.size {
		u.sent.Add(off, n)
	}
	fc.mu.Unlock()
	if wrong {
		fc.r.taint(u.key)
	}
	frame := fc.seal(u.xfer, u.id, off, fc.plaintext(u.key, off, n, wrong))
	fc.mu.Lock()
	u.lastFrame = frame
	fc.mu.Unlock()
	fc.r.note("#%d s%d chunk %s xfer %d [%d,+%d) legal %v", i, fc.n, what, u.xfer, off, n, legal)
	fc.sendFrame(frame, u)
	if !legal {
		var c *proto.ErrorCode
		if must {
			c = code(proto.CodeBadChunk)
		}
		fc.illegal(c, fmt.Sprintf("chunk [%d,+%d) of transfer %d", off, n, u.xfer))
	}
}

// chunkLegalLocked reports whether an authentic chunk [off, off+n) of u
// is one the server must accept or drop.
func (fc *fzConn) chunkLegalLocked(u *fzUp, off, n uint64) bool {
	if u.over() {
		return true // finished or ended: dropped (PROTOCOL.md §10.1)
	}
	if u.commitSent {
		return false // every byte arrived: the server may still be checking
	}
	// Open, or an abort on its way: the chunk may reach a live upload.
	return n > 0 && inside(u.missing, off, n) && !overlaps(&u.sent, off, n)
}

func (fc *fzConn) chunk(i int, a, b, c byte) {
	x, u, ok := fc.pickUpload(a)
	if !ok {
		fc.r.note("#%d s%d chunk: no upload", i, fc.n)
		return
	}
	mode := b % 8
	if mode == chunkMalformed {
		var f []byte
		switch c % 3 {
		case 0: // length 0
			f = append(chunkHeader(x, 0, 0, proto.ClientToServer, 1), make([]byte, proto.TagSize)...)
		case 1: // longer than the chunk size
			f = append(chunkHeader(x, 0, fzChunkSize+1, proto.ClientToServer, 1), make([]byte, fzChunkSize+1+proto.TagSize)...)
		default: // beyond the protocol's largest file
			f = append(chunkHeader(x, proto.MaxFileSize-5, 10, proto.ClientToServer, 1), make([]byte, 10+proto.TagSize)...)
		}
		fc.r.note("#%d s%d malformed chunk %d for xfer %d", i, fc.n, c%3, x)
		fc.sendFrame(f, nil)
		fc.illegal(code(proto.CodeProtocol), "a malformed chunk frame")
		return
	}
	if u == nil {
		fc.mu.Lock()
		must := fc.notIssuedLocked(x, false)
		fc.mu.Unlock()
		fc.r.note("#%d s%d chunk for xfer %d, which is no upload", i, fc.n, x)
		fc.sendFrame(fc.seal(x, [16]byte{}, 0, fc.plaintext(fzKey{}, 0, 100, false)), nil)
		var cd *proto.ErrorCode
		if must {
			cd = code(proto.CodeBadChunk)
		}
		fc.illegal(cd, fmt.Sprintf("a chunk for transfer %d", x))
		return
	}
	fc.mu.Lock()
	gaps := gapsLocked(u)
	sent := u.sent.Ranges()
	last := u.lastFrame
	fc.mu.Unlock()
	size := u.key.size
	// The next piece not yet sent, or (if all was sent) the file's start.
	off, n := uint64(0), min(pieceLen(c), max(size, 1))
	if len(gaps) > 0 {
		g := gaps[0]
		off, n = g.Off, min(pieceLen(c), g.Len)
		if mode == chunkLast {
			g = gaps[len(gaps)-1]
			n = min(pieceLen(c), g.Len)
			off = g.Off + g.Len - n
		}
	}
	switch mode {
	case chunkNext, chunkLast:
		fc.sendPiece(i, u, off, n, false, "")
	case chunkWrong:
		fc.sendPiece(i, u, off, n, true, "with other content")
	case chunkAnywhere:
		fc.sendPiece(i, u, uint64(c)*37, 1+uint64(b>>3)*33, false, "anywhere")
	case chunkResealed:
		if len(sent) > 0 {
			off, n = sent[0].Off, min(sent[0].Len, fzChunkSize)
		}
		fc.sendPiece(i, u, off, n, false, "resealed")
	case chunkReplay:
		if last == nil {
			fc.sendPiece(i, u, off, n, false, "(nothing to replay)")
			return
		}
		fc.mu.Lock()
		h, _ := proto.ParseChunkHeader(last[:proto.ChunkHeaderLen], fzChunkSize)
		legal := u.over()
		must := u.live() && !u.uncertain && !u.replaced && !fc.r.concurrent
		fc.mu.Unlock()
		fc.r.note("#%d s%d chunk replayed xfer %d [%d,+%d) legal %v", i, fc.n, u.xfer, h.Offset, h.Length, legal)
		fc.sendFrame(last, u)
		if !legal {
			var cd *proto.ErrorCode
			if must {
				cd = code(proto.CodeBadChunk)
			}
			fc.illegal(cd, fmt.Sprintf("a replayed frame of transfer %d", u.xfer))
		}
	case chunkTampered:
		var f []byte
		how := ""
		certain := true // the flaw is one authentication catches
		switch c >> 6 {
		case 0, 1:
			f = fc.seal(x, u.id, off, fc.plaintext(u.key, off, n, false))
			j := int(c) % len(f)
			f[j] ^= 1 << (c % 8)
			how = fmt.Sprintf("byte %d flipped", j)
			// Flipping the transfer number, offset or length changes what
			// the frame is, not only whether it authenticates.
			certain = j >= 16
		case 2:
			var id [16]byte
			rand.Read(id[:])
			f = fc.seal(x, id, off, fc.plaintext(u.key, off, n, false))
			how = "sealed with another upload ID"
		default:
			s, err := proto.NewSealer(&fc.c.skey, proto.ServerToClient)
			if err != nil {
				fc.r.t.Fatal(err)
			}
			f = sealFrame(fc.r.t, s, x, u.id, off, fc.plaintext(u.key, off, n, false))
			how = "sealed in the server's direction"
		}
		fc.mu.Lock()
		// Only an upload the server still holds authenticates chunks.
		must := certain && !u.over() && !u.commitSent && !u.abortSent && !u.replaced && !fc.r.concurrent
		fc.mu.Unlock()
		fc.r.note("#%d s%d chunk tampered (%s) xfer %d [%d,+%d)", i, fc.n, how, x, off, n)
		fc.sendFrame(f, nil)
		var cd *proto.ErrorCode
		if must {
			cd = code(proto.CodeBadChunk)
		}
		fc.illegal(cd, "a tampered chunk ("+how+")")
	}
}

func (fc *fzConn) sendAll(i int, a, b byte) {
	_, u, ok := fc.pickUpload(a)
	if !ok || u == nil {
		fc.r.note("#%d s%d send all: no upload", i, fc.n)
		return
	}
	fc.mu.Lock()
	gaps := gapsLocked(u)
	fc.mu.Unlock()
	var pieces []proto.Range
	for _, g := range gaps {
		for off := g.Off; off < g.Off+g.Len; off += fzChunkSize {
			pieces = append(pieces, proto.Range{Off: off, Len: min(fzChunkSize, g.Off+g.Len-off)})
		}
	}
	if b&1 != 0 {
		for l, r := 0, len(pieces)-1; l < r; l, r = l+1, r-1 {
			pieces[l], pieces[r] = pieces[r], pieces[l]
		}
	}
	fc.r.note("#%d s%d send all of xfer %d: %d pieces, reversed %v, wrong %v", i, fc.n, u.xfer, len(pieces), b&1 != 0, b&2 != 0)
	for _, p := range pieces {
		if fc.dead {
			return
		}
		fc.sendPiece(i, u, p.Off, p.Len, b&2 != 0, "")
	}
}

func (fc *fzConn) commit(i int, a, b byte) {
	x, u, ok := fc.pickUpload(a)
	if !ok {
		fc.r.note("#%d s%d commit: no upload", i, fc.n)
		return
	}
	if u != nil && b&1 != 0 {
		fc.waitFor(fc.r.remaining(fzAnswerWait), func() bool { return u.ck != nil || u.over() })
	}
	fc.mu.Lock()
	legal, must := true, false
	switch {
	case u == nil:
		legal, must = false, fc.notIssuedLocked(x, false)
	case u.over(), u.commitSent, u.abortSent, u.ck != nil:
		// Committed, aborted or ended: ignored; or checked: committed.
	default:
		// The server may or may not have sent the checksum; it certainly
		// has not if bytes are missing (unless the upload was taken over:
		// then the commit is ignored).
		legal = false
		must = !coversAll(&u.sent, u.missing) && !u.replaced && !fc.r.concurrent
	}
	if u != nil {
		u.commitSent = true
		fc.r.h.mu.Lock()
		fc.r.h.mayStore[fzNames[u.key.name]] = true
		fc.r.h.mu.Unlock()
	}
	fc.mu.Unlock()
	fc.r.note("#%d s%d commit xfer %d legal %v", i, fc.n, x, legal)
	fc.send(&proto.UploadCommit{Xfer: x})
	if !legal {
		var cd *proto.ErrorCode
		if must {
			cd = code(proto.CodeProtocol)
		}
		fc.illegal(cd, fmt.Sprintf("a commit of transfer %d", x))
	}
}

func (fc *fzConn) abort(i int, a byte) {
	x, u, ok := fc.pickUpload(a)
	if !ok {
		fc.r.note("#%d s%d abort: no upload", i, fc.n)
		return
	}
	fc.mu.Lock()
	must := u == nil && fc.notIssuedLocked(x, false)
	if u != nil {
		u.abortSent = true
	}
	fc.mu.Unlock()
	fc.r.note("#%d s%d abort xfer %d", i, fc.n, x)
	fc.send(&proto.UploadAbort{Xfer: x})
	if u == nil {
		var cd *proto.ErrorCode
		if must {
			cd = code(proto.CodeProtocol)
		}
		fc.illegal(cd, fmt.Sprintf("an abort of transfer %d", x))
	}
}

func (fc *fzConn) list(i int, a, b byte) {
	p := int(a) % len(fzPrefixes)
	rq := &fzReq{kind: 'l', name: p}
	m := &proto.ListRequest{Req: fc.addReq(rq), Prefix: fzPrefixes[p], Flags: b & 1}
	fc.r.note("#%d s%d list req %d %q flags %d", i, fc.n, m.Req, m.Prefix, m.Flags)
	fc.send(m)
	fc.waitAnswer(rq)
}

func (fc *fzConn) restore(i int, a, b byte) {
	n := int(a) % len(fzNames)
	rq := &fzReq{kind: 'r', name: n, version: fzVersions[int(b)%len(fzVersions)]}
	m := &proto.RestoreRequest{Req: fc.addReq(rq), Name: fzNames[n], Version: rq.version}
	fc.r.note("#%d s%d restore req %d %q version %d", i, fc.n, m.Req, m.Name, m.Version)
	fc.send(m)
	fc.waitAnswer(rq)
}

func (fc *fzConn) restoreDone(i int, a, b byte) {
	x, rs, ok := fc.pickRestore(a)
	if !ok {
		fc.r.note("#%d s%d restore done: no restore", i, fc.n)
		return
	}
	status := b % 4
	fc.mu.Lock()
	must := rs == nil && fc.notIssuedLocked(x, true)
	if rs != nil {
		rs.released = true
	}
	fc.mu.Unlock()
	fc.r.note("#%d s%d restore done xfer %d status %d", i, fc.n, x, status)
	if status == 3 { // not a status: malformed
		b := proto.AppendMessage(nil, &proto.RestoreDone{Xfer: x})
		b[len(b)-1] = 7
		fc.write(b)
		fc.illegal(code(proto.CodeProtocol), "a RestoreDone with status 7")
		return
	}
	fc.send(&proto.RestoreDone{Xfer: x, Status: status}) // 2: a mismatch, which has the version checked again
	if rs == nil {
		var cd *proto.ErrorCode
		if must {
			cd = code(proto.CodeProtocol)
		}
		fc.illegal(cd, fmt.Sprintf("a RestoreDone of transfer %d", x))
	}
}

// garbage writes a control frame the server must refuse with CodeProtocol.
func (fc *fzConn) garbage(i int, a byte) {
	var b []byte
	what, fin := "", false
	switch a % 10 {
	case 0:
		what, b = "unknown message type", frameHeader(0x7f, 0)
	case 1:
		what, b = "4 GiB frame", frameHeader(proto.TypeListRequest, 0xffffffff)
	case 2:
		what, b = "frame just over 64 KiB", append(frameHeader(proto.TypeUploadRequest, proto.MaxControlFrame+1), 0, 0, 0)
	case 3:
		what, b = "server message", proto.AppendMessage(nil, &proto.UploadChecksum{Xfer: 1})
	case 4:
		what, b = "request number 0", proto.AppendMessage(nil, &proto.ListRequest{Req: 0})
	case 5:
		what, b = "Reconnect in a session", proto.AppendMessage(nil, &proto.Reconnect{Version: proto.Version, ClientID: fc.r.h.id})
	case 6:
		what, b = "trailing byte", withTrailingByte(&proto.ListRequest{Req: 0xfff0})
	case 7:
		what, b = "unknown entry kind", proto.AppendMessage(nil, &proto.UploadRequest{Req: 0xfff1, Name: "fz/\xff", Kind: 0x7f})
	case 8:
		what, b = "status out of range", proto.AppendMessage(nil, &proto.RestoreDone{Xfer: 2})
		b[len(b)-1] = 3
	default:
		what, fin = "truncated frame, then FIN", true
		b = proto.AppendMessage(nil, &proto.ListRequest{Req: 0xfff2, Prefix: "fz"})
		b = b[:len(b)-2]
	}
	fc.r.note("#%d s%d garbage: %s", i, fc.n, what)
	fc.write(b)
	if fin {
		fc.finSent = true
		fc.c.ctrl.Close()
	}
	fc.illegal(code(proto.CodeProtocol), what)
}

func (fc *fzConn) stream(i int, a byte) {
	r := fc.r
	open := func() *quic.SendStream {
		s, err := fc.c.conn.OpenUniStream()
		if err != nil {
			r.note("s%d: no data stream: %v", fc.n, err)
			return nil
		}
		s.SetWriteDeadline(time.Now().Add(fzWriteWait))
		return s
	}
	switch a % 7 {
	case 0:
		r.note("#%d s%d end the data stream", i, fc.n)
		if fc.data != nil {
			fc.data.Close()
			fc.data, fc.dataUps = nil, nil
		}
	case 1:
		r.note("#%d s%d reset the data stream", i, fc.n)
		if fc.data != nil {
			fc.data.CancelWrite(0x77)
			fc.lostStream()
		}
	case 2:
		r.note("#%d s%d end the data stream inside a frame", i, fc.n)
		fc.sendFrame(chunkHeader(1, 0, 100, proto.ClientToServer, 1)[:7], nil)
		if fc.data == nil {
			return // not even opened
		}
		fc.data.Close()
		fc.data, fc.dataUps = nil, nil
		fc.illegal(code(proto.CodeProtocol), "a data stream ending inside a frame")
	case 3:
		r.note("#%d s%d data stream of an unknown type", i, fc.n)
		if s := open(); s != nil {
			s.Write([]byte{0x44, 0, 0})
			s.Close()
			fc.illegal(code(proto.CodeProtocol), "a data stream of type 0x44")
		}
	case 4:
		r.note("#%d s%d empty data stream", i, fc.n)
		if s := open(); s != nil {
			s.Close()
		}
	case 5:
		r.note("#%d s%d data stream with only its type", i, fc.n)
		if s := open(); s != nil {
			s.Write([]byte{proto.StreamTypeChunks})
			s.Close()
		}
	default:
		r.note("#%d s%d data stream left open with only its type", i, fc.n)
		if s := open(); s != nil {
			s.Write([]byte{proto.StreamTypeChunks})
			fc.silent = append(fc.silent, s)
		}
	}
}

// session ends the current connection in one of several ways, or opens a
// second one beside it.
func (r *fzRun) session(i int, a byte) {
	fc := r.cur
	kind := a % 5
	if fc == nil || fc.dead {
		r.note("#%d new session", i)
		r.connect()
		return
	}
	switch kind {
	case 0:
		r.note("#%d s%d close the connection", i, fc.n)
		fc.checkEnded()
		fc.closedByUs, fc.dead = true, true
		fc.c.close()
	case 1:
		r.note("#%d s%d finish the control stream", i, fc.n)
		fc.finSent = true
		fc.c.ctrl.Close()
		// The server must end the session at once (PROTOCOL.md §9.6).
		fc.illegal(code(proto.CodeNoError), "the end of the control stream")
		fc.dead = true
	case 2:
		r.note("#%d s%d open another session", i, fc.n)
	case 3:
		r.note("#%d s%d reset the control stream", i, fc.n)
		fc.ctrlReset = true
		fc.c.ctrl.CancelWrite(0x77)
		// PROTOCOL.md §11: a reset control stream closes with INTERNAL.
		fc.illegal(code(proto.CodeInternal), "a reset of the control stream")
		fc.dead = true
	default:
		r.note("#%d s%d close the connection with an error", i, fc.n)
		fc.checkEnded()
		fc.closedByUs, fc.dead = true, true
		fc.c.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeProtocol), "fuzz")
	}
	r.connect()
}

// ---- Seeds ----

// fzProg joins operations into an input.
func fzProg(ops ...[fzOpLen]byte) []byte {
	var b []byte
	for _, op := range ops {
		b = append(b, op[:]...)
	}
	return b
}

func fzSeeds() [][]byte {
	const (
		a, b, c, stored, missing, empty, dotdot          = 0, 1, 2, 3, 4, 5, 6
		s0, s1, s1000, s1024, s1025, s2048, s4000, s9000 = 0, 1, 2, 3, 4, 5, 6, 7
		hashed, wrongSums, mt1, mt2, mt3                 = 1, 2, 1 << 2, 2 << 2, 3 << 2
		wait                                             = 1
	)
	return [][]byte{
		// The happy path: upload, chunks, checksum, commit, list, restore.
		fzProg(
			[4]byte{opUpload, a, s2048, hashed},
			[4]byte{opSendAll, 0, 0},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSync},
			[4]byte{opList, 1, 1},
			[4]byte{opRestore, a, 0},
			[4]byte{opSync},
			[4]byte{opRestoreDone, 0, 0},
		),
		// Abort mid-transfer; a late chunk of the aborted upload is dropped.
		fzProg(
			[4]byte{opUpload, b, s4000, mt1},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opAbort, 0},
			[4]byte{opSync},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opList, 0, 0},
		),
		// Commit before the checksum: closed with PROTOCOL.
		fzProg(
			[4]byte{opUpload, c, s4000, mt1},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opCommit, 0, 0},
		),
		// Restores: latest, version 1, missing, invalid, no such version;
		// RestoreDone twice.
		fzProg(
			[4]byte{opRestore, stored, 1},
			[4]byte{opRestore, stored, 0},
			[4]byte{opRestoreDone, 0, 1},
			[4]byte{opRestoreDone, 0, 0},
			[4]byte{opRestore, missing, 0},
			[4]byte{opRestore, empty, 0},
			[4]byte{opRestore, stored, 3},
			[4]byte{opPause, 5},
			[4]byte{opRestoreDone, 1, 0},
			[4]byte{opList, 2, 1},
		),
		// A restore the client says did not match: the server checks the
		// version again (it is intact) and restores it again.
		fzProg(
			[4]byte{opRestore, stored, 0},
			[4]byte{opSync},
			[4]byte{opRestoreDone, 0, 2},
			[4]byte{opPause, 20},
			[4]byte{opRestore, stored, 0},
			[4]byte{opSync},
			[4]byte{opRestoreDone, 0, 0},
		),
		// Chunks after the commit's result: dropped.
		fzProg(
			[4]byte{opUpload, a, s1000, mt1},
			[4]byte{opSendAll, 0, 1},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSync},
			[4]byte{opChunk, 0, chunkReplay},
			[4]byte{opChunk, 0, chunkResealed},
			[4]byte{opSync},
		),
		// A tampered chunk: BAD_CHUNK.
		fzProg(
			[4]byte{opUpload, b, s1024, mt2},
			[4]byte{opChunk, 0, chunkTampered, 100},
		),
		// A duplicate chunk: BAD_CHUNK.
		fzProg(
			[4]byte{opUpload, c, s4000, mt2},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opChunk, 0, chunkResealed},
		),
		// Resume in a new session after the connection closed.
		fzProg(
			[4]byte{opUpload, a, s4000, mt2},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opChunk, 0, chunkLast},
			[4]byte{opSession, 0},
			[4]byte{opUpload, a, s4000, mt2},
			[4]byte{opSendAll, 0, 1},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSync},
		),
		// A second request for a name in the same session takes the first
		// one's upload over and resumes it; one for a changed file (other
		// modification time) starts afresh. Chunks and a commit of the
		// taken-over transfer are dropped and ignored.
		fzProg(
			[4]byte{opUpload, a, s4000, mt1},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opUpload, a, s4000, mt1},
			[4]byte{opChunk, 1, chunkNext},
			[4]byte{opCommit, 1, 0},
			[4]byte{opSendAll, 0, 0},
			[4]byte{opUpload, a, s4000, mt2},
			[4]byte{opSendAll, 0, 1},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSync},
		),
		// Take-over by a second session of the client, which resumes.
		fzProg(
			[4]byte{opUpload, b, s4000, mt3},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opSession, 2},
			[4]byte{opUpload, b, s4000, mt3},
			[4]byte{opSendAll, 0, 0},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSync},
		),
		// Unchanged by modification time and by checksums; wrong checksums;
		// refusals: too large, invalid names.
		fzProg(
			[4]byte{opUpload, stored, s1000, 0},
			[4]byte{opUpload, stored, s1000, hashed},
			[4]byte{opUpload, stored, s1000, hashed | wrongSums},
			[4]byte{opAbort, 0},
			[4]byte{opUpload, a, s9000, 0},
			[4]byte{opUpload, empty, s1, 0},
			[4]byte{opUpload, dotdot, s1, 0},
			[4]byte{opSync},
		),
		// An empty file, then the same request again: unchanged.
		fzProg(
			[4]byte{opUpload, c, s0, 0x10},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSync},
			[4]byte{opUpload, c, s0, 0x10},
		),
		// Garbage on the control stream.
		fzProg(
			[4]byte{opList, 0, 0},
			[4]byte{opGarbage, 4},
		),
		// Too many transfers, then one frees a slot.
		fzProg(
			[4]byte{opUpload, a, s1025, mt3},
			[4]byte{opUpload, b, s1025, mt3},
			[4]byte{opRestore, stored, 0},
			[4]byte{opUpload, c, s1025, mt3},
			[4]byte{opUpload, missing, s1025, mt3},
			[4]byte{opRestore, stored, 1},
			[4]byte{opAbort, 0},
			[4]byte{opSync},
			[4]byte{opUpload, missing, s1025, mt3},
			[4]byte{opSendAll, 0, 0},
			[4]byte{opAbort, 0},
			[4]byte{opSync},
		),
		// Data streams: ended, reset, empty, type only, left open.
		fzProg(
			[4]byte{opUpload, a, s4000, 0},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opStream, 0},
			[4]byte{opChunk, 0, chunkNext, 7},
			[4]byte{opStream, 1},
			[4]byte{opStream, 4},
			[4]byte{opStream, 5},
			[4]byte{opStream, 6},
			[4]byte{opChunk, 0, chunkLast},
			[4]byte{opPause, 10},
			[4]byte{opAbort, 0},
			[4]byte{opSync},
		),
		// The client ends the session (FIN) mid-upload, then another session
		// lists.
		fzProg(
			[4]byte{opUpload, b, s2048, 0},
			[4]byte{opChunk, 0, chunkNext},
			[4]byte{opSession, 1},
			[4]byte{opList, 0, 1},
		),
		// A reset control stream, a malformed chunk, a stream cut inside a
		// frame.
		fzProg(
			[4]byte{opSession, 3},
			[4]byte{opUpload, c, s2048, 0},
			[4]byte{opChunk, 0, chunkMalformed, 1},
			[4]byte{opSession, 0},
			[4]byte{opStream, 2},
		),
		// The connection closes with an error right after a commit.
		fzProg(
			[4]byte{opUpload, c, s1, mt3},
			[4]byte{opSendAll, 0, 0},
			[4]byte{opCommit, 0, wait},
			[4]byte{opSession, 4},
			[4]byte{opList, 3, 1},
		),
	}
}

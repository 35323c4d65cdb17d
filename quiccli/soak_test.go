package quiccli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/qbackup/qbackup/quic"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// The soak: N clients against one real server, each doing random sends
// (new files, new versions, resends of interrupted ones), restores, lists
// and deliberate connection drops until a deadline; then every version a
// send acknowledged is restored and compared byte for byte. TestSoakSmoke
// runs it for a few seconds in every test run; TestSoak runs it for
// QBACKUP_SOAK (a duration; scripts/soak sets it).
//
//	QBACKUP_SOAK=2m QBACKUP_SOAK_CLIENTS=24 QBACKUP_SOAK_SEED=7 go test -run '^TestSoak$' -v ./quiccli/

func TestSoakSmoke(t *testing.T) {
	cfg := soakConfig{duration: 3 * time.Second, clients: 4, seed: 1, opTimeout: 20 * time.Second}
	if v := os.Getenv("QBACKUP_SOAK_SEED"); v != "" {
		cfg.seed = parseSeed(t, v)
	}
	rep := runSoak(t, cfg)
	t.Logf("\n%s", rep)
}

func TestSoak(t *testing.T) {
	v := os.Getenv("QBACKUP_SOAK")
	if v == "" {
		t.Skip("set QBACKUP_SOAK to a duration (2m) to run the soak; scripts/soak does")
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("QBACKUP_SOAK=%q: want a positive duration such as 2m", v)
	}
	cfg := soakConfig{duration: d, clients: 24, seed: uint64(time.Now().UnixNano()), opTimeout: time.Minute}
	if v := os.Getenv("QBACKUP_SOAK_CLIENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			t.Fatalf("QBACKUP_SOAK_CLIENTS=%q: want 1 to 1000", v)
		}
		cfg.clients = n
	}
	if v := os.Getenv("QBACKUP_SOAK_SEED"); v != "" {
		cfg.seed = parseSeed(t, v)
	}
	rep := runSoak(t, cfg)
	// Plain stdout, between markers, so scripts/soak can cut it out.
	fmt.Printf("=== SOAK REPORT\n%s=== END SOAK REPORT\n", rep)
}

func parseSeed(t *testing.T, v string) uint64 {
	n, err := strconv.ParseUint(v, 0, 64)
	if err != nil {
		t.Fatalf("QBACKUP_SOAK_SEED=%q: want an unsigned integer", v)
	}
	return n
}

type soakConfig struct {
	duration  time.Duration
	clients   int
	seed      uint64
	opTimeout time.Duration // bounds every single operation
}

const (
	soakMaxNames    = 12      // distinct file names per client
	soakMaxFileSize = 2 << 20 // largest file sent
	soakMaxOps      = 1 << 20 // per client, besides the deadline
	soakRegisterPar = 4       // registrations (key generation) at once
	soakReconnects  = 8       // connection attempts before a client gives up
	soakVerifyTries = 4       // attempts to restore one version at the end
	soakMaxReported = 20      // lost or corrupted versions named in the failure
	soakServerLines = 10      // server warnings kept for the log
	soakBatchMax    = 4       // files per send
	soakExpected    = "expected: connection dropped on purpose"
)

// Error kinds shown in the report even when zero.
var soakKinds = []string{soakExpected, "connection lost", "checksum", "restore mismatch", "list mismatch", "timeout", "other"}

// soakStats is what all clients record.
type soakStats struct {
	mu       sync.Mutex
	ops      map[string]int
	errs     map[string]int
	samples  map[string]string // first error of each kind
	sent     atomic.Int64
	restored atomic.Int64
	verified atomic.Int64 // bytes restored by the final check

	acked, lost, corrupted int
	problems               []string
}

func (st *soakStats) op(kind string) {
	st.mu.Lock()
	st.ops[kind]++
	st.mu.Unlock()
}

func (st *soakStats) fail(kind string, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.errs[kind]++
	if _, ok := st.samples[kind]; !ok && err != nil {
		st.samples[kind] = err.Error()
	}
}

// soakLog counts the server's warnings by level, message and error, and
// keeps the first few lines.
type soakLog struct {
	mu     sync.Mutex
	n      int
	byKind map[string]int
	first  []string
}

var soakLogFields = regexp.MustCompile(`level=(\S+)|msg=("(?:[^"\\]|\\.)*"|\S+)|err=("(?:[^"\\]|\\.)*"|\S+)`)

func (l *soakLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	var kind []string
	for _, m := range soakLogFields.FindAllStringSubmatch(string(p), -1) {
		kind = append(kind, m[0])
	}
	if l.byKind == nil {
		l.byKind = map[string]int{}
	}
	l.byKind[strings.Join(kind, " ")]++
	if len(l.first) < soakServerLines {
		l.first = append(l.first, strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// ackedVersion is content a send acknowledged as stored. version is 0 when
// the answer named none ("unchanged", "identical"): it is found by content.
type ackedVersion struct {
	name    string
	version uint32
	seed    uint64
	size    int
	crc     uint32
	sha     [32]byte
}

type localFile struct {
	seed  uint64
	size  int
	acked bool
}

type soakClient struct {
	id    int
	c     *Client
	cfg   soakConfig
	st    *soakStats
	rng   *rand.Rand
	src   string // the files sent
	out   string // restores land here
	s     *Session
	names []string
	local map[string]*localFile
	acked []*ackedVersion
	tick  int64 // makes every written file's mtime unique
	seq   int

	droppedOn atomic.Pointer[Session] // the session we cut on purpose
}

func soakContent(seed uint64, size int) []byte {
	b := make([]byte, size)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(b)
	return b
}

// soakSize is 0 to 2 MiB, mostly small.
func soakSize(r *rand.Rand) int {
	switch p := r.IntN(100); {
	case p < 10:
		return r.IntN(17) // 0..16 bytes
	case p < 50:
		return r.IntN(testChunk + 2)
	case p < 85:
		return r.IntN(512 << 10)
	default:
		return r.IntN(soakMaxFileSize + 1)
	}
}

func runSoak(t *testing.T, cfg soakConfig) string {
	srvLog := &soakLog{}
	srv := srvtest.Start(t, func(s *quicsrv.Server) {
		s.ChunkSize = testChunk
		s.Logger = slogNew(srvLog)
	})
	st := &soakStats{ops: map[string]int{}, errs: map[string]int{}, samples: map[string]string{}}
	hard, cancel := context.WithTimeout(context.Background(), 3*cfg.duration+10*time.Minute)
	defer cancel()

	// Register, a few at a time: 2048-bit key generation is the slow part.
	start := time.Now()
	clients := make([]*soakClient, cfg.clients)
	sem := make(chan struct{}, soakRegisterPar)
	var wg sync.WaitGroup
	regErr := make(chan error, cfg.clients)
	for i := range clients {
		k := &soakClient{
			id:    i,
			c:     &Client{Home: filepath.Join(t.TempDir(), "home"), KeyBits: 2048, Out: io.Discard, Err: io.Discard},
			cfg:   cfg,
			st:    st,
			rng:   rand.New(rand.NewPCG(cfg.seed, uint64(i))),
			src:   t.TempDir(),
			out:   t.TempDir(),
			local: map[string]*localFile{},
		}
		clients[i] = k
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(hard, cfg.opTimeout)
			defer cancel()
			if _, err := k.c.Register(ctx, srv.Addr, fmt.Sprintf("soak-%03d", i), RegisterOptions{Fingerprint: srv.Fingerprint}); err != nil {
				regErr <- fmt.Errorf("register client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(regErr)
	for err := range regErr {
		t.Fatal(err)
	}
	registered := time.Since(start)
	t.Cleanup(func() {
		for _, k := range clients {
			if k.s != nil {
				k.s.Close()
			}
		}
	})

	// The soak proper.
	start = time.Now()
	deadline := start.Add(cfg.duration)
	for _, k := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.run(hard, deadline)
		}()
	}
	wg.Wait()
	soaked := time.Since(start)

	// Every acknowledged version must come back byte-identical.
	start = time.Now()
	for _, k := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.verifyAll(hard)
		}()
	}
	wg.Wait()
	verifiedIn := time.Since(start)

	rep := st.report(cfg, registered, soaked, verifiedIn, srvLog)
	srvLog.mu.Lock()
	for _, l := range srvLog.first {
		t.Logf("server: %s", l)
	}
	srvLog.mu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, p := range st.problems {
		t.Error(p)
	}
	if st.lost != 0 || st.corrupted != 0 {
		t.Errorf("%d acknowledged versions lost, %d corrupted (seed %d)", st.lost, st.corrupted, cfg.seed)
	}
	for kind, n := range st.errs {
		if kind != soakExpected {
			t.Errorf("%d unexpected errors of kind %q, first: %s", n, kind, st.samples[kind])
		}
	}
	if st.acked == 0 {
		t.Errorf("no send was acknowledged: the soak tested nothing")
	}
	return rep
}

func slogNew(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func (st *soakStats) report(cfg soakConfig, registered, soaked, verified time.Duration, l *soakLog) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "duration\t%v (registration %v, final verification %v)\n", soaked.Round(time.Millisecond), registered.Round(time.Millisecond), verified.Round(time.Millisecond))
	fmt.Fprintf(w, "clients\t%d\n", cfg.clients)
	fmt.Fprintf(w, "seed\t%d\n", cfg.seed)
	fmt.Fprintf(w, "operations\t\n")
	kinds := make([]string, 0, len(st.ops))
	total := 0
	for k, n := range st.ops {
		kinds = append(kinds, k)
		total += n
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %s\t%d\n", k, st.ops[k])
	}
	fmt.Fprintf(w, "  total\t%d\n", total)
	fmt.Fprintf(w, "errors by kind\t\n")
	seen := map[string]bool{}
	for _, k := range soakKinds {
		seen[k] = true
		fmt.Fprintf(w, "  %s\t%d\n", k, st.errs[k])
	}
	var extra []string
	for k := range st.errs {
		if !seen[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		fmt.Fprintf(w, "  %s\t%d\n", k, st.errs[k])
	}
	fmt.Fprintf(w, "bytes sent\t%s\n", formatBytes(st.sent.Load()))
	fmt.Fprintf(w, "bytes restored\t%s during the soak, %s in the final check\n", formatBytes(st.restored.Load()), formatBytes(st.verified.Load()))
	fmt.Fprintf(w, "acknowledged\t%d versions, each restored and compared\n", st.acked)
	fmt.Fprintf(w, "server warnings\t%d (below)\n", l.n)
	w.Flush()
	l.mu.Lock()
	logKinds := make([]string, 0, len(l.byKind))
	for k := range l.byKind {
		logKinds = append(logKinds, k)
	}
	sort.Strings(logKinds)
	for _, k := range logKinds {
		fmt.Fprintf(&b, "  %5d  %s\n", l.byKind[k], k)
	}
	l.mu.Unlock()
	result := "PASS"
	if st.lost != 0 || st.corrupted != 0 {
		result = "FAIL"
	}
	fmt.Fprintf(&b, "lost=%d corrupted=%d %s\n", st.lost, st.corrupted, result)
	for _, k := range append(soakKinds, extra...) {
		if s, ok := st.samples[k]; ok {
			fmt.Fprintf(&b, "first %q: %s\n", k, s)
		}
	}
	return b.String()
}

// run does random operations until the deadline.
func (k *soakClient) run(hard context.Context, deadline time.Time) {
	if err := k.reconnect(hard); err != nil {
		return
	}
	for i := 0; i < soakMaxOps && time.Now().Before(deadline) && hard.Err() == nil; i++ {
		ctx, cancel := context.WithTimeout(hard, k.cfg.opTimeout)
		switch p := k.rng.IntN(100); {
		case p < 30:
			k.send(ctx, false)
		case p < 40:
			k.send(ctx, true)
		case p < 45:
			k.sendResilient(ctx)
		case p < 70:
			k.restore(ctx)
		case p < 90:
			k.list(ctx)
		default:
			k.st.op("drop between operations")
			k.drop(k.s)
		}
		cancel()
		if k.s.Err() != nil {
			if err := k.reconnect(hard); err != nil {
				return
			}
		}
	}
}

// drop cuts s abruptly, as a network failure would.
func (k *soakClient) drop(s *Session) {
	k.droppedOn.Store(s)
	s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "soak: dropped on purpose")
}

func (k *soakClient) reconnect(hard context.Context) error {
	if k.s != nil {
		k.s.Close()
		k.s = nil
	}
	var err error
	wait := 50 * time.Millisecond
	for range soakReconnects {
		ctx, cancel := context.WithTimeout(hard, k.cfg.opTimeout)
		var s *Session
		s, _, err = k.c.Connect(ctx, "", "")
		cancel()
		if err == nil {
			k.s = s
			k.st.op("connect")
			return nil
		}
		k.st.fail(k.classify(err, nil), fmt.Errorf("client %d connect: %w", k.id, err))
		if hard.Err() != nil {
			break
		}
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
	return err
}

// classify names the kind of a failure seen on session s (nil: none).
func (k *soakClient) classify(err error, s *Session) string {
	if s != nil && (k.droppedOn.Load() == s || errors.Is(err, errSessionClosed)) {
		// The failure can be seen (a stream reset) a moment before the
		// connection's context ends: give it that moment.
		select {
		case <-s.ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	dropped := s != nil && s.Err() != nil && k.droppedOn.Load() == s
	var pe *proto.Error
	switch {
	case dropped:
		return soakExpected
	case errors.Is(err, errMismatch), errors.Is(err, errRestoreMismatch):
		return "checksum"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case s != nil && s.Err() != nil:
		return "connection lost"
	case errors.As(err, &pe):
		return "server " + pe.Code.String()
	}
	return "other"
}

// write gives name new content with a unique modification time.
func (k *soakClient) write(name string) error {
	lf := &localFile{seed: k.rng.Uint64(), size: soakSize(k.rng)}
	path := filepath.Join(k.src, name)
	if err := os.WriteFile(path, soakContent(lf.seed, lf.size), 0o640); err != nil {
		return err
	}
	k.tick++
	mt := time.Unix(1_600_000_000+k.tick, int64(k.id))
	if err := os.Chtimes(path, mt, mt); err != nil {
		return err
	}
	k.local[name] = lf
	return nil
}

// pickBatch chooses distinct names to send: new ones, new versions of
// earlier ones, and again the content of sends that did not go through,
// which the server resumes.
func (k *soakClient) pickBatch() ([]string, error) {
	n := 1 + k.rng.IntN(soakBatchMax)
	chosen := map[string]bool{}
	var names []string
	for range n {
		var name string
		if len(k.names) < soakMaxNames && (len(k.names) == 0 || k.rng.IntN(3) == 0) {
			name = fmt.Sprintf("c%03d-f%02d.bin", k.id, len(k.names))
			k.names = append(k.names, name)
		} else {
			name = k.names[k.rng.IntN(len(k.names))]
		}
		if chosen[name] {
			continue
		}
		chosen[name] = true
		if lf := k.local[name]; lf == nil || lf.acked || k.rng.IntN(2) == 0 {
			if err := k.write(name); err != nil {
				return nil, err
			}
		}
		names = append(names, name)
	}
	return names, nil
}

func (k *soakClient) send(ctx context.Context, cut bool) {
	names, err := k.pickBatch()
	if err != nil {
		k.st.fail("other", err)
		return
	}
	opts := SendOptions{}
	var chunks int
	for _, name := range names {
		opts.Paths = append(opts.Paths, filepath.Join(k.src, name))
		chunks += (k.local[name].size + testChunk - 1) / testChunk
	}
	s := k.s
	kind := "send"
	if cut {
		kind = "send, dropped mid-send"
		limit := int64(1 + k.rng.IntN(max(1, chunks)))
		var n atomic.Int64
		opts.testHookChunkRead = func(string, int, int64) {
			if n.Add(1) == limit {
				k.drop(s)
			}
		}
	}
	k.st.op(kind)
	rep := &soakReporter{results: map[string]soakResult{}}
	res := s.Send(ctx, opts, rep)
	k.st.sent.Add(res.Bytes)
	k.record(names, rep, res, s)
}

func (k *soakClient) sendResilient(ctx context.Context) {
	names, err := k.pickBatch()
	if err != nil {
		k.st.fail("other", err)
		return
	}
	opts := SendOptions{}
	for _, name := range names {
		opts.Paths = append(opts.Paths, filepath.Join(k.src, name))
	}
	k.st.op("send (resilient, own session)")
	rep := &soakReporter{results: map[string]soakResult{}}
	res, err := k.c.SendResilient(ctx, "", "", opts, ReconnectOptions{Attempts: 3, MaxWait: time.Second}, rep)
	if err != nil {
		k.st.fail(k.classify(err, nil), fmt.Errorf("client %d send-resilient: %w", k.id, err))
		return
	}
	k.st.sent.Add(res.Bytes)
	k.record(names, rep, res, nil)
}

// record notes what a send acknowledged and counts what failed.
func (k *soakClient) record(names []string, rep *soakReporter, res *SendResult, s *Session) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	for _, name := range names {
		lf := k.local[name]
		r, ok := rep.results[name]
		version, acked := parseSendResult(r.result)
		if ok && r.err == nil && acked {
			lf.acked = true
			data := soakContent(lf.seed, lf.size)
			k.acked = append(k.acked, &ackedVersion{name: name, version: version, seed: lf.seed, size: lf.size,
				crc: proto.CksumBytes(data), sha: sha256.Sum256(data)})
			continue
		}
		err := r.err
		if err == nil {
			err = res.FirstErr
		}
		if err == nil {
			err = fmt.Errorf("no result (%q)", r.result)
		}
		k.st.fail(k.classify(err, s), fmt.Errorf("client %d send %s: %w", k.id, name, err))
	}
}

// parseSendResult reads the version out of a file's result line.
func parseSendResult(s string) (uint32, bool) {
	switch s {
	case "unchanged", "identical":
		return 0, true
	}
	var v uint32
	for _, f := range []string{"stored v%d", "resumed v%d"} {
		if n, err := fmt.Sscanf(s, f, &v); err == nil && n == 1 && v > 0 {
			return v, true
		}
	}
	return 0, false
}

type soakResult struct {
	result string
	err    error
}

// soakReporter keeps each file's last result.
type soakReporter struct {
	mu      sync.Mutex
	results map[string]soakResult
}

func (r *soakReporter) Start(int, int64)                       {}
func (r *soakReporter) File(name string, _ int64) FileProgress { return &soakFile{r: r, name: name} }
func (r *soakReporter) Warn(string, ...any)                    {}
func (r *soakReporter) Interrupt()                             {}
func (r *soakReporter) Close()                                 {}

type soakFile struct {
	r    *soakReporter
	name string
}

func (f *soakFile) Add(int64) {}
func (f *soakFile) Retry()    {}
func (f *soakFile) Done(result string, err error) {
	f.r.mu.Lock()
	f.r.results[f.name] = soakResult{result, err}
	f.r.mu.Unlock()
}

// resolve finds the version of acknowledged content whose answer named
// none, by its checksums; false if no listed version holds it.
func resolve(a *ackedVersion, entries []proto.ListEntry) bool {
	if a.version != 0 {
		return true
	}
	for _, e := range entries {
		if e.Name == a.name && e.Size == uint64(a.size) && e.SHA256 == a.sha {
			a.version = e.Version
			return true
		}
	}
	return false
}

// checkListed compares an acknowledged version with the listing.
func checkListed(a *ackedVersion, entries []proto.ListEntry) error {
	if !resolve(a, entries) {
		return fmt.Errorf("%s: acknowledged content (%d bytes, cksum %d) is in no listed version", a.name, a.size, a.crc)
	}
	for _, e := range entries {
		if e.Name == a.name && e.Version == a.version {
			if e.Size != uint64(a.size) || e.CRC != a.crc || e.SHA256 != a.sha {
				return fmt.Errorf("%s v%d: listed size %d cksum %d, acknowledged %d, %d", a.name, a.version, e.Size, e.CRC, a.size, a.crc)
			}
			return nil
		}
	}
	return fmt.Errorf("%s v%d: acknowledged but not listed", a.name, a.version)
}

func (k *soakClient) list(ctx context.Context) {
	k.st.op("list")
	s := k.s
	entries, err := s.List(ctx, "", true)
	if err != nil {
		k.st.fail(k.classify(err, s), fmt.Errorf("client %d list: %w", k.id, err))
		return
	}
	for _, a := range k.acked {
		if err := checkListed(a, entries); err != nil {
			k.st.fail("list mismatch", fmt.Errorf("client %d: %w", k.id, err))
		}
	}
}

// restoreVersion restores one acknowledged version and compares its bytes.
// mismatch is true when the server sent a file, verified, that differs.
func (k *soakClient) restoreVersion(ctx context.Context, s *Session, a *ackedVersion) (n int64, mismatch bool, err error) {
	k.seq++
	out := filepath.Join(k.out, fmt.Sprintf("r%06d", k.seq))
	defer os.Remove(out)
	res, err := s.Restore(ctx, RestoreOptions{Name: a.name, Version: int(a.version), Output: out}, nopReporter{})
	if err == nil && res.Failed > 0 {
		err = res.FirstErr
	}
	if err != nil {
		return 0, false, err
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return 0, false, err
	}
	if !bytes.Equal(got, soakContent(a.seed, a.size)) {
		return int64(len(got)), true, fmt.Errorf("%s v%d: restored %d bytes that differ from the %d acknowledged", a.name, a.version, len(got), a.size)
	}
	return int64(len(got)), false, nil
}

func (k *soakClient) restore(ctx context.Context) {
	if len(k.acked) == 0 {
		k.list(ctx)
		return
	}
	s := k.s
	a := k.acked[k.rng.IntN(len(k.acked))]
	kind := "restore"
	var timer *time.Timer
	if k.rng.IntN(5) == 0 {
		kind = "restore, dropped at random"
		timer = time.AfterFunc(time.Duration(k.rng.IntN(30))*time.Millisecond, func() { k.drop(s) })
		defer timer.Stop()
	}
	k.st.op(kind)
	if a.version == 0 {
		entries, err := s.List(ctx, a.name, true)
		if err != nil {
			k.st.fail(k.classify(err, s), fmt.Errorf("client %d restore %s: %w", k.id, a.name, err))
			return
		}
		if !resolve(a, entries) {
			k.st.fail("list mismatch", fmt.Errorf("client %d: %s: acknowledged content is in no listed version", k.id, a.name))
			return
		}
	}
	n, mismatch, err := k.restoreVersion(ctx, s, a)
	k.st.restored.Add(n)
	switch {
	case mismatch:
		k.st.fail("restore mismatch", fmt.Errorf("client %d: %w", k.id, err))
	case err != nil:
		k.st.fail(k.classify(err, s), fmt.Errorf("client %d restore %s v%d: %w", k.id, a.name, a.version, err))
	}
}

// verifyAll restores every acknowledged version over a fresh session.
func (k *soakClient) verifyAll(hard context.Context) {
	problem := func(lost bool, err error) {
		k.st.mu.Lock()
		defer k.st.mu.Unlock()
		if lost {
			k.st.lost++
		} else {
			k.st.corrupted++
		}
		if len(k.st.problems) < soakMaxReported {
			k.st.problems = append(k.st.problems, fmt.Sprintf("client %d: %v", k.id, err))
		}
	}
	k.st.mu.Lock()
	k.st.acked += len(k.acked)
	k.st.mu.Unlock()
	if len(k.acked) == 0 {
		return
	}
	var entries []proto.ListEntry
	var err error
	for range soakVerifyTries {
		if err = k.reconnect(hard); err != nil {
			break
		}
		ctx, cancel := context.WithTimeout(hard, k.cfg.opTimeout)
		entries, err = k.s.List(ctx, "", true)
		cancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		for _, a := range k.acked {
			problem(true, fmt.Errorf("%s: cannot list for the final check: %v", a.name, err))
		}
		return
	}
	for _, a := range k.acked {
		if err := checkListed(a, entries); err != nil {
			problem(!resolve(a, entries), err) // absent: lost; listed wrong: corrupted
			continue
		}
		var err error
		var mismatch bool
		for range soakVerifyTries {
			if k.s == nil || k.s.Err() != nil {
				if err = k.reconnect(hard); err != nil {
					break
				}
			}
			ctx, cancel := context.WithTimeout(hard, k.cfg.opTimeout)
			var n int64
			n, mismatch, err = k.restoreVersion(ctx, k.s, a)
			cancel()
			k.st.verified.Add(n)
			if mismatch {
				break
			}
			if err == nil {
				break
			}
			k.st.fail(k.classify(err, k.s), fmt.Errorf("client %d final restore %s v%d: %w", k.id, a.name, a.version, err))
		}
		if err != nil {
			problem(!mismatch, err) // restored but different: corrupted; not restored: lost
		}
	}
}

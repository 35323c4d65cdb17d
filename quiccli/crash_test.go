package quiccli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/store"
)

// crashSeedEnv overrides TestCrashServerKill's seed, to replay a run.
const crashSeedEnv = "QBACKUP_CRASH_SEED"

var crashStart time.Time // for timing logs

// crashFile is one local file that a send was started for.
type crashFile struct {
	name  string // stored name: rN/...
	path  string
	data  []byte
	sha   [32]byte
	acked bool // a send reported it stored (or unchanged)
}

// crashKillWindows are when, after the uploads start, each round kills the
// server: a random moment in each window. Early kills catch small files
// committing and big ones before their first checkpoint; late ones come
// after the server's first checkpoint (every 2 s) of the slowest big file,
// so that the next send can resume it.
var crashKillWindows = [][2]time.Duration{
	{150 * time.Millisecond, 800 * time.Millisecond},
	{800 * time.Millisecond, 2 * time.Second},
	{2600 * time.Millisecond, 3600 * time.Millisecond},
	{3 * time.Second, 4 * time.Second},
}

// bigPace is how long each big file's send takes in all (the client
// sleeps after each chunk), so that some are still running at the kill.
var bigPace = []time.Duration{1200 * time.Millisecond, 2800 * time.Millisecond, 4500 * time.Millisecond}

// TestCrashServerKill runs the real server (quicsrv.Run, in a child
// process) and SIGKILLs it at a random moment while a client sends small
// files and a few MiB-sized ones concurrently, then, for each of several
// rounds, checks the data directory as the crash left it (SQLite integrity,
// every version's file matches its record and the bytes sent, every file
// the client was told is stored is there, nothing else is kept), restarts
// the server on the same directory and address, restores what was
// acknowledged and sends again what was not, which must resume or complete.
// At the end every file of every round restores byte-identical.
func TestCrashServerKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills server processes; takes about 20 s")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", crashSeedEnv, err)
		}
	}
	t.Logf("seed %d (replay with %s=%d)", seed, crashSeedEnv, seed)
	start := time.Now()
	crashStart = start

	ctx := testContext(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	cs := startCrashServer(t, dataDir, freeUDPAddr(t))
	c := newClient(t)
	id, err := c.Register(ctx, cs.addr, "crash", RegisterOptions{Fingerprint: cs.fp})
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	rawID, err := id.ID()
	if err != nil {
		t.Fatal(err)
	}
	cid := store.ClientID(rawID)
	src := t.TempDir()

	all := map[string]*crashFile{} // every file a send was started for, all rounds
	var resumedFiles int
	var resumedBytes int64
	for round, window := range crashKillWindows {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		prefix := fmt.Sprintf("r%d", round)
		mk := func(base string, size int) *crashFile {
			name := prefix + "/" + base
			path := filepath.Join(src, prefix, base)
			data := writeRandom(t, path, size, rng.Uint64())
			return &crashFile{name: name, path: path, data: data, sha: sha256.Sum256(data)}
		}
		var bigs []*crashFile
		for i := range bigPace {
			bigs = append(bigs, mk(fmt.Sprintf("big-%d", i), 3<<19+rng.IntN(3<<19)))
		}
		// Small files, sent three at a time with pauses in between, so that
		// they span every kill window: some are committing at the kill.
		var smalls []*crashFile
		pauses := map[*crashFile]time.Duration{}
		for i := range 150 {
			size := rng.IntN(200 << 10)
			switch i % 10 {
			case 0:
				size = 0
			case 1, 2:
				size = rng.IntN(100)
			}
			f := mk(fmt.Sprintf("small-%03d", i), size)
			smalls = append(smalls, f)
			pauses[f] = time.Duration(rng.Int64N(int64(160 * time.Millisecond)))
		}

		// Send until the kill.
		s, _, err := c.Connect(ctx, "", "")
		if err != nil {
			t.Fatalf("round %d: Connect: %v", round, err)
		}
		var (
			mu        sync.Mutex
			attempted []*crashFile
			failed    []*crashFile
			wg        sync.WaitGroup
		)
		send := func(f *crashFile, opts SendOptions) {
			mu.Lock()
			attempted = append(attempted, f)
			mu.Unlock()
			st, err := s.sendFile(ctx, sendItem{path: f.path, name: f.name, size: int64(len(f.data))}, opts, nopFile{}, new(atomic.Int64))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, f)
				return
			}
			if st.Version == 0 {
				t.Errorf("round %d: %s: sent without a version: %+v", round, f.name, st)
			}
			f.acked = true
		}
		for i, f := range bigs {
			pause := bigPace[i] / time.Duration((len(f.data)+testChunk-1)/testChunk)
			wg.Go(func() {
				send(f, SendOptions{testHookChunkRead: func(string, int, int64) { time.Sleep(pause) }})
			})
		}
		next := make(chan *crashFile)
		for range 3 {
			wg.Go(func() {
				for f := range next {
					if s.Err() == nil {
						time.Sleep(pauses[f])
					}
					if s.Err() != nil {
						continue // the session is gone: not attempted
					}
					send(f, SendOptions{})
				}
			})
		}
		wg.Go(func() {
			defer close(next)
			for _, f := range smalls {
				next <- f
			}
		})
		killAfter := window[0] + time.Duration(rng.Int64N(int64(window[1]-window[0])))
		time.Sleep(killAfter)
		cs.kill()
		// The server is gone, and a dead peer sends nothing: end the
		// connection so that the calls waiting for it fail now rather than
		// at the idle timeout. (Not Session.Close: it must not run while
		// sends are under way; see the report.)
		s.conn.CloseWithError(0, "test: the server was killed")
		wg.Wait()
		s.Close()
		cs.logInteresting(fmt.Sprintf("round %d", round))

		acked := 0
		for _, f := range attempted {
			all[f.name] = f
			if f.acked {
				acked++
			}
		}
		t.Logf("[%v] round %d: killed after %v: %d files attempted, %d acknowledged, %d not (big files acknowledged: %v %v %v)",
			time.Since(start).Round(time.Millisecond), round, killAfter.Round(time.Millisecond), len(attempted), acked, len(failed), bigs[0].acked, bigs[1].acked, bigs[2].acked)

		// The data directory as the crash left it.
		checkCrashStore(t, ctx, fmt.Sprintf("round %d, after the kill", round), dataDir, cid, all, false)
		if t.Failed() {
			t.FailNow()
		}

		// Restart; what was acknowledged restores, what was not is sent again.
		cs.start()
		s2, _, err := c.Connect(ctx, "", "")
		if err != nil {
			t.Fatalf("round %d: Connect after the restart: %v", round, err)
		}
		checkCrashList(t, ctx, fmt.Sprintf("round %d, after the restart", round), s2, all)
		var rmu sync.Mutex
		var rwg sync.WaitGroup
		for _, f := range failed {
			rwg.Go(func() {
				st, err := s2.sendFile(ctx, sendItem{path: f.path, name: f.name, size: int64(len(f.data))}, SendOptions{}, nopFile{}, new(atomic.Int64))
				rmu.Lock()
				defer rmu.Unlock()
				if err != nil {
					t.Errorf("round %d: sending %s (%d bytes) again after the restart: %v", round, f.name, len(f.data), err)
					return
				}
				f.acked = true
				if st.Resumed > 0 {
					resumedFiles++
					resumedBytes += st.Resumed
					t.Logf("round %d: %s resumed: %d of %d bytes kept by the server", round, f.name, st.Resumed, len(f.data))
					if st.Resumed >= int64(len(f.data)) {
						t.Errorf("round %d: %s: resumed %d bytes of %d, yet the server asked for bytes", round, f.name, st.Resumed, len(f.data))
					}
				}
			})
		}
		rwg.Wait()
		checkCrashRestore(t, ctx, s2, prefix, all)
		s2.Close()
		cs.logInteresting(fmt.Sprintf("round %d, after the restart", round))
		if t.Failed() {
			t.FailNow()
		}
	}

	// Every acknowledged file of every round, from a fresh session.
	s, _, err := c.Connect(ctx, "", "")
	if err != nil {
		t.Fatalf("final Connect: %v", err)
	}
	checkCrashList(t, ctx, "at the end", s, all)
	for round := range crashKillWindows {
		checkCrashRestore(t, ctx, s, fmt.Sprintf("r%d", round), all)
	}
	s.Close()
	// One more crash, at rest: everything is stored, nothing is pending.
	cs.kill()
	checkCrashStore(t, ctx, "at the end, after a kill at rest", dataDir, cid, all, true)
	if resumedFiles == 0 {
		t.Errorf("no send after a kill resumed (FileStatus.Resumed was 0 every time)")
	}
	t.Logf("%d files across %d rounds; %d resumed after a kill (%d bytes kept); %v in all",
		len(all), len(crashKillWindows), resumedFiles, resumedBytes, time.Since(start).Round(time.Millisecond))
}

// checkCrashStore opens the data directory of a killed server and checks
// that the database is sound and agrees with the files and with what the
// client sent: every version is a complete file the client sent, every
// acknowledged file is listed, nothing is left that no row owns. With
// settled, every file has been acknowledged and nothing may be pending.
func checkCrashStore(t *testing.T, ctx context.Context, label, dir string, cid store.ClientID, all map[string]*crashFile, settled bool) {
	t.Helper()
	st, err := store.Open(ctx, dir)
	if err != nil {
		t.Fatalf("%s: store.Open: %v", label, err)
	}
	defer st.Close()
	if err := st.IntegrityCheck(ctx); err != nil {
		t.Errorf("%s: %v", label, err)
	}
	list, err := st.List(ctx, cid, "")
	if err != nil {
		t.Fatalf("%s: List: %v", label, err)
	}
	listed := map[string]bool{}
	versions := 0
	for _, sum := range list {
		name := sum.Latest.Name
		listed[name] = true
		f := all[name]
		if f == nil {
			t.Errorf("%s: the store lists %q, which was never sent", label, name)
			continue
		}
		vs, err := st.Versions(ctx, cid, name)
		if err != nil {
			t.Errorf("%s: Versions(%q): %v", label, name, err)
			continue
		}
		if len(vs) != sum.Versions {
			t.Errorf("%s: %q: List says %d versions, Versions gives %d", label, name, sum.Versions, len(vs))
		}
		if len(vs) != 1 {
			t.Errorf("%s: %q has %d versions; its content was only ever one", label, name, len(vs))
		}
		for _, fv := range vs {
			versions++
			if fv.Size != int64(len(f.data)) || fv.SHA256 != f.sha || fv.CRC != proto.CksumBytes(f.data) || !fv.Verified {
				t.Errorf("%s: %q version %d: size %d, SHA-256 match %v, verified %v; want %d bytes as sent, verified",
					label, name, fv.Version, fv.Size, fv.SHA256 == f.sha, fv.Verified, len(f.data))
				continue
			}
			r, err := st.OpenVersion(ctx, cid, fv)
			if err != nil {
				t.Errorf("%s: %q version %d: %v", label, name, fv.Version, err)
				continue
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, f.data) {
				t.Errorf("%s: %q version %d on disk: %d bytes (%v), differ from the %d sent", label, name, fv.Version, len(got), err, len(f.data))
			}
		}
	}
	var lost []string
	for name, f := range all {
		if f.acked && !listed[name] {
			lost = append(lost, name)
		}
	}
	sort.Strings(lost)
	if len(lost) > 0 {
		t.Errorf("%s: %d acknowledged files are not stored: %v", label, len(lost), lost)
	}
	if settled && len(listed) != len(all) {
		t.Errorf("%s: %d files stored, want all %d sent", label, len(listed), len(all))
	}

	onDisk := 0
	filepath.WalkDir(filepath.Join(dir, "clients"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			onDisk++
		}
		return err
	})
	if onDisk != versions {
		t.Errorf("%s: %d files under clients/, want %d, one per version", label, onDisk, versions)
	}
	pending, pendingBytes, err := st.PartialUploads(ctx)
	if err != nil {
		t.Errorf("%s: PartialUploads: %v", label, err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	var temps []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			temps = append(temps, e.Name())
		}
	}
	if len(temps) != pending {
		t.Errorf("%s: %d temp files, want %d, one per upload kept: %v", label, len(temps), pending, temps)
	}
	if settled && pending != 0 {
		t.Errorf("%s: %d uploads still kept after every file was stored", label, pending)
	}
	t.Logf("[%v] %s: recovered %+v; %d files stored, %d versions, %d uploads kept for resume (%d bytes)",
		time.Since(crashStart).Round(time.Millisecond), label, st.Recovered(), len(listed), versions, pending, pendingBytes)
}

// checkCrashList checks the client's listing: only files that were sent,
// each with the size and SHA-256 sent, and every acknowledged one.
func checkCrashList(t *testing.T, ctx context.Context, label string, s *Session, all map[string]*crashFile) {
	t.Helper()
	entries, err := s.List(ctx, "", false)
	if err != nil {
		t.Fatalf("%s: List: %v", label, err)
	}
	listed := map[string]bool{}
	for _, e := range entries {
		listed[e.Name] = true
		f := all[e.Name]
		if f == nil {
			t.Errorf("%s: ls lists %q, which was never sent", label, e.Name)
			continue
		}
		if e.Size != uint64(len(f.data)) || e.SHA256 != f.sha || !e.Verified {
			t.Errorf("%s: ls %q: size %d, SHA-256 match %v, verified %v; want %d bytes as sent", label, e.Name, e.Size, e.SHA256 == f.sha, e.Verified, len(f.data))
		}
	}
	for name, f := range all {
		if f.acked && !listed[name] {
			t.Errorf("%s: ls does not list %q, which was acknowledged", label, name)
		}
	}
}

// checkCrashRestore restores the directory prefix and compares every file
// in it with what was sent; every acknowledged file under prefix must be
// there.
func checkCrashRestore(t *testing.T, ctx context.Context, s *Session, prefix string, all map[string]*crashFile) {
	t.Helper()
	out := filepath.Join(t.TempDir(), prefix)
	res, err := s.Restore(ctx, RestoreOptions{Name: prefix, Output: out}, nopReporter{})
	if err != nil {
		t.Errorf("restore %s: %v", prefix, err)
		return
	}
	if res.Failed != 0 {
		t.Errorf("restore %s: %d files failed", prefix, res.Failed)
	}
	restored := 0
	for name, f := range all {
		if !strings.HasPrefix(name, prefix+"/") {
			continue
		}
		got, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(strings.TrimPrefix(name, prefix+"/"))))
		switch {
		case err != nil && f.acked:
			t.Errorf("restore %s: acknowledged %q: %v", prefix, name, err)
		case err == nil && !bytes.Equal(got, f.data):
			t.Errorf("restore %s: %q: %d bytes that differ from the %d sent", prefix, name, len(got), len(f.data))
		case err == nil:
			restored++
		}
	}
	if restored != res.Files {
		t.Errorf("restore %s: %d files restored, %d of them checked", prefix, res.Files, restored)
	}
}

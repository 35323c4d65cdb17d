package quicsrv_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// TestFlood is scripts/flood: it builds qbackupd, runs it on loopback with
// the flags in QBACKUP_FLOOD_ARGS, and attacks it, one way after another,
// for QBACKUP_FLOOD seconds each, while a well-behaved client registers,
// uploads and restores every 250 ms: strangers that never authenticate,
// idle sessions with grown windows, chunks stalled half-way, restores
// nobody reads, uploads left open by the thousand. It reports, per
// attack, how the probe fared and the server's peak resident memory, and
// fails if a probe failed or the memory passed --memory by more than
// QBACKUP_FLOOD_OVERHEAD (default 128 MiB). Every attack is bounded in
// count and time and sends only to loopback.
func TestFlood(t *testing.T) {
	phaseArg := os.Getenv("QBACKUP_FLOOD")
	if phaseArg == "" {
		t.Skip("scripts/flood runs it (QBACKUP_FLOOD=seconds per attack)")
	}
	phase, err := time.ParseDuration(phaseArg + "s")
	if err != nil {
		t.Fatalf("QBACKUP_FLOOD=%q: give seconds", phaseArg)
	}
	overhead := int64(128 << 20)
	if v := os.Getenv("QBACKUP_FLOOD_OVERHEAD"); v != "" {
		if overhead, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("QBACKUP_FLOOD_OVERHEAD=%q: give bytes", v)
		}
	}
	f := startFloodServer(t, strings.Fields(os.Getenv("QBACKUP_FLOOD_ARGS")))
	key, bad := testKeys(t)
	w := &world{srv: f.srv, key: key, bad: bad, files: map[string][]byte{}}
	big := randBytes(32 << 20)
	for ci := range 4 { // the file the unread restores ask for, for each hostile client
		q := quietT(t)
		c := registered(q, f.srv, fmt.Sprintf("flood-%d", ci), bad)
		if res := c.upload("big", big); res.Status != proto.ResultStored || q.err() != nil {
			t.Fatalf("storing the file the restores ask for: %+v %v", res, q.err())
		}
		c.close()
	}

	attacks := []struct {
		name string
		run  func(ctx context.Context, q *quiet)
	}{
		{"strangers: connections that never authenticate, 50 a second", func(ctx context.Context, q *quiet) {
			var held []*quic.Conn
			defer func() {
				for _, c := range held {
					c.CloseWithError(0, "")
				}
			}()
			for tick := time.NewTicker(20 * time.Millisecond); len(held) < 5000; {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if c, err := dialConnCtx(ctx, f.srv); err == nil {
					held = append(held, c)
				}
			}
			<-ctx.Done()
		}},
		{"idle sessions: 4 clients x 40 sessions, windows grown, then nothing", func(ctx context.Context, q *quiet) {
			floodClients(ctx, q, f.srv, bad, 4, 40, func(c *rawClient, i int) {
				c.upload(fmt.Sprintf("grow-%d", i), randBytes(8<<20))
				<-ctx.Done()
			})
		}},
		{"stalled chunks: 4 clients x 10 sessions x 8 streams stop half-way", func(ctx context.Context, q *quiet) {
			floodClients(ctx, q, f.srv, bad, 4, 10, func(c *rawClient, i int) {
				r := c.startUpload(fmt.Sprintf("stall-%d", i), make([]byte, 64<<20))
				frame := c.frame(r.Xfer, r.UploadID, 0, make([]byte, int(c.welcome.ChunkSize)))
				for range 8 {
					s := c.openData()
					go s.Write(frame[:len(frame)/2])
				}
				<-ctx.Done()
			})
		}},
		{"unread restores: 4 clients x 10 sessions x 8 restores, nothing read", func(ctx context.Context, q *quiet) {
			floodClients(ctx, q, f.srv, bad, 4, 10, func(c *rawClient, i int) {
				for range 8 {
					c.send(&proto.RestoreRequest{Req: c.nextReq(), Name: "big"})
				}
				<-ctx.Done()
			})
		}},
		{"open uploads: 2 clients x 10 sessions x 256 uploads, none finished", func(ctx context.Context, q *quiet) {
			floodClients(ctx, q, f.srv, bad, 2, 10, func(c *rawClient, i int) {
				for j := range 256 {
					c.send(c.uploadReq(fmt.Sprintf("open-%d-%d", i, j), make([]byte, 1<<20)))
				}
				<-ctx.Done()
			})
		}},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\n%-72s %6s %6s %9s %9s %10s\n", "attack", "probes", "failed", "p50", "max", "peak RSS")
	failed := false
	for _, a := range attacks {
		ctx, cancel := context.WithTimeout(context.Background(), phase)
		q := quietT(t)
		var wg sync.WaitGroup
		wg.Go(func() { a.run(ctx, q) })
		peak := f.peakRSS(ctx)
		time.Sleep(phase / 5) // let the attack take hold
		var lat []time.Duration
		var errs []string
		for i := 0; ctx.Err() == nil; i++ {
			start := time.Now()
			if err := floodProbe(t, w, i, 10*time.Second); err != nil {
				errs = append(errs, err.Error())
			}
			lat = append(lat, time.Since(start))
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
		wg.Wait()
		cancel()
		slices.Sort(lat)
		p50, worst := time.Duration(0), time.Duration(0)
		if len(lat) > 0 {
			p50, worst = lat[len(lat)/2], lat[len(lat)-1]
		}
		rss := <-peak
		fmt.Fprintf(&report, "%-72s %6d %6d %9v %9v %6d MiB\n", a.name, len(lat), len(errs), p50.Round(time.Millisecond), worst.Round(time.Millisecond), rss>>20)
		if len(errs) > 0 {
			failed = true
			fmt.Fprintf(&report, "    first failure: %s\n", errs[0])
		}
		if rss > f.memory+overhead {
			failed = true
			fmt.Fprintf(&report, "    peak RSS over --memory (%d MiB) + %d MiB\n", f.memory>>20, overhead>>20)
		}
		time.Sleep(2 * time.Second) // the attack's connections close
	}
	fmt.Fprintf(&report, "server log: %d lines\n", f.logLines())
	fmt.Println("=== FLOOD REPORT" + report.String() + "=== END FLOOD REPORT")
	if failed {
		t.Errorf("the server did not hold:%s", report.String())
	}
}

// floodServer is a qbackupd process on loopback.
type floodServer struct {
	srv    *srvtest.Server // Addr and Fingerprint only: it runs elsewhere
	cmd    *exec.Cmd
	memory int64
	log    *bytes.Buffer
	mu     sync.Mutex
}

func startFloodServer(t *testing.T, args []string) *floodServer {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "qbackupd")
	if out, err := exec.Command("go", "build", "-o", bin, "../quicsrv/cmd/qbackupd").CombinedOutput(); err != nil {
		t.Fatalf("go build qbackupd: %v\n%s", err, out)
	}
	f := &floodServer{memory: 512 << 20, log: &bytes.Buffer{}}
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--memory="); ok {
			f.memory, _ = strconv.ParseInt(v, 10, 64)
		} else if a == "--memory" && i+1 < len(args) {
			f.memory, _ = strconv.ParseInt(args[i+1], 10, 64)
		}
	}
	full := append([]string{"--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--registration", "open"}, args...)
	f.cmd = exec.Command(bin, full...)
	stderr, err := f.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.cmd.Process.Signal(os.Interrupt)
		f.cmd.Wait()
	})
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			f.mu.Lock()
			f.log.WriteString(sc.Text() + "\n")
			f.mu.Unlock()
			if strings.Contains(sc.Text(), "qbackupd listening") {
				listening <- sc.Text()
			}
		}
	}()
	select {
	case line := <-listening:
		addr := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(line)
		fp := regexp.MustCompile(`fingerprint=([0-9a-f]+)`).FindStringSubmatch(line)
		f.srv = &srvtest.Server{Addr: addr[1], Fingerprint: fp[1]}
	case <-time.After(30 * time.Second):
		t.Fatalf("qbackupd did not start:\n%s", f.log.String())
	}
	return f
}

// peakRSS samples the server's resident memory until ctx ends and then
// sends the peak.
func (f *floodServer) peakRSS(ctx context.Context) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		for {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", f.cmd.Process.Pid)); err == nil {
				if m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b); m != nil {
					kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
					peak = max(peak, kb<<10)
				}
			}
			select {
			case <-ctx.Done():
				out <- peak
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return out
}

func (f *floodServer) logLines() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Count(f.log.String(), "\n")
}

// floodClients runs clients x sessions hostile sessions, each registered
// as one of the clients, and do in each, until ctx ends.
func floodClients(ctx context.Context, q *quiet, srv *srvtest.Server, key *rsa.PrivateKey, clients, sessions int, do func(c *rawClient, i int)) {
	var wg sync.WaitGroup
	for ci := range clients {
		for si := range sessions {
			wg.Go(func() {
				c := registered(q, srv, fmt.Sprintf("flood-%d", ci), key)
				defer c.close()
				do(c, ci*sessions+si)
			})
		}
	}
	wg.Wait()
}

// floodProbe is the well-behaved client's round: it reports what went
// wrong rather than failing the test.
func floodProbe(t *testing.T, w *world, i int, bound time.Duration) error {
	q := quietT(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := registered(q, w.srv, goodName, w.key)
		defer c.close()
		name, data := fmt.Sprintf("probe-%d", i), randBytes(200_000+i)
		if res := c.upload(name, data); res.Status != proto.ResultStored {
			q.Errorf("upload: %+v", res)
			return
		}
		if _, got := c.restore(name, 0); !bytes.Equal(got, data) {
			q.Errorf("restore differs")
		}
	}()
	select {
	case <-done:
		return q.err()
	case <-time.After(bound):
		return fmt.Errorf("no answer within %v", bound)
	}
}

// quiet is a testing.TB for the flood's own clients: a failure is
// recorded and ends the goroutine (as t.FailNow would), but does not fail
// the test; the flood judges the outcome itself.
type quiet struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func quietT(t *testing.T) *quiet { return &quiet{TB: t} }

func (q *quiet) Helper()             {}
func (q *quiet) Logf(string, ...any) {}
func (q *quiet) Errorf(format string, args ...any) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.errs = append(q.errs, fmt.Sprintf(format, args...))
}
func (q *quiet) Fatalf(format string, args ...any) {
	q.Errorf(format, args...)
	runtime.Goexit()
}
func (q *quiet) Fatal(args ...any) { q.Fatalf("%s", fmt.Sprint(args...)) }
func (q *quiet) Cleanup(func())    {} // the clients are closed by hand

func (q *quiet) err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.errs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", q.errs[0])
}

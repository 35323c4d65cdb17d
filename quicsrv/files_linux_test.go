package quicsrv_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quicsrv"
)

// lowLimitEnv is set in the child process TestOpenFileFloodLowLimit
// runs in, to the open-file limit it lowers itself to.
const lowLimitEnv = "QBACKUP_TEST_NOFILE"

// lowLimitReport marks the lines of the child's output its parent logs.
const lowLimitReport = "report: "

// TestOpenFileFloodLowLimit is issue 15's check, a descriptor flood under
// a low RLIMIT_NOFILE with a probe served: in a process of its own, whose
// limit is 512 (soft and hard, so nothing can raise it), a server with
// the default caps is flooded by two clients, each asking on two
// connections for 150 uploads and 4 restores it never finishes: 616
// files, more than the whole limit. The flood gets 0xb, never 0x8, and
// each client holds its share, a quarter of what the limit leaves for
// transfers; another client uploads, lists and restores meanwhile; the
// process never comes near the limit; the log has one line about the
// refusals, not one per refusal, and no error.
func TestOpenFileFloodLowLimit(t *testing.T) {
	if v := os.Getenv(lowLimitEnv); v != "" {
		limit, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", lowLimitEnv, v, err)
		}
		lowLimitChild(t, limit)
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestOpenFileFloodLowLimit$", "-test.count=1", "-test.v", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), lowLimitEnv+"=512")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestOpenFileFloodLowLimit")) {
		var keep []string
		for line := range strings.Lines(string(out)) {
			if !strings.Contains(line, "level=DEBUG") {
				keep = append(keep, strings.TrimRight(line, "\n"))
			}
		}
		t.Fatalf("the child under a limit of 512 open files failed (%v) after %v:\n%s", err, time.Since(start).Round(time.Millisecond), strings.Join(keep, "\n"))
	}
	for line := range strings.Lines(string(out)) {
		if _, report, ok := strings.Cut(line, lowLimitReport); ok {
			t.Log(strings.TrimRight(report, "\n"))
		}
	}
	t.Logf("child ran in %v", time.Since(start).Round(time.Millisecond))
}

func lowLimitChild(t *testing.T, limit uint64) {
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		t.Fatalf("lowering the open-file limit to %d: %v", limit, err)
	}
	report := func(format string, args ...any) { t.Logf(lowLimitReport+format, args...) }
	var refusalLines, errorLines atomic.Int64
	w := newWorld(t, func(s *quicsrv.Server) {
		s.Logger = slog.New(countingHandler{s.Logger.Handler(), &refusalLines, &errorLines})
	})
	srv := w.srv
	total, perClient := quicsrv.OpenFileCaps(srv.Srv)
	if total != 128 || perClient != 32 {
		t.Fatalf("default caps under a limit of %d: %d, %d; want 128, 32", limit, total, perClient)
	}
	stored := []string{"kept-0", "kept-1", "kept-0", "kept-1"}
	names := []string{badName + "-0", badName + "-1"}
	for _, name := range names {
		c := registered(t, srv, name, w.bad)
		for _, n := range stored[:2] {
			c.upload(n, randBytes(3000))
		}
		c.close()
	}

	floodStart := time.Now()
	var conns []floodResult
	asked, opened := 0, 0
	for i, name := range names {
		mine := 0
		for j := range 2 {
			r := flood(t, srv, name, w.bad, fmt.Sprintf("%d-%d", i, j), 150, stored)
			asked += 150 + len(stored)
			mine += r.opened
			conns = append(conns, r)
		}
		if mine != perClient {
			t.Errorf("%s holds %d transfers; want its share, %d", name, mine, perClient)
		}
		opened += mine
	}
	floodTook := time.Since(floodStart)
	peak, _ := countFDs(t, srv.Dir)
	report("limit %d: caps %d in all, %d per client; two clients asked for %d transfers in %v, got %d",
		limit, total, perClient, asked, floodTook.Round(time.Millisecond), opened)
	report("descriptors held during the flood: %d transfers' files, %d of the store (database, directories), %d others (sockets, runtime, log): %d of %d",
		peak.transfer, peak.store, peak.other, peak.transfer+peak.store+peak.other, limit)
	if peak.transfer != opened {
		t.Errorf("the process holds %d transfers' files; %d transfers are open", peak.transfer, opened)
	}

	w.healthy(t) // the probe: upload, list and restore during the flood

	// One line at once, then at most one per 10 s.
	if n, most := refusalLines.Load(), 1+int64(floodTook/(10*time.Second)); n < 1 || n > most {
		t.Errorf("%d log lines about refused transfers in %v; want 1 to %d", n, floodTook, most)
	}
	report("%d refusals logged in %d lines, %d error lines", asked-opened, refusalLines.Load(), errorLines.Load())
	for _, r := range conns {
		r.c.close()
	}
	waitFor(t, "every file to be given back", func() bool { return quicsrv.FilesInUse(srv.Srv) == 0 })
	w.healthy(t)
	if n := errorLines.Load(); n != 0 {
		t.Errorf("%d lines logged at level ERROR", n)
	}
}

// countingHandler counts the log lines about refused transfers and those
// at level ERROR, and passes every line on.
type countingHandler struct {
	slog.Handler
	refusals, errors *atomic.Int64
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	if strings.HasPrefix(r.Message, "refused transfers") {
		h.refusals.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{h.Handler.WithAttrs(as), h.refusals, h.errors}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{h.Handler.WithGroup(name), h.refusals, h.errors}
}

package quicsrv

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/store"
)

func TestDefaultOpenFiles(t *testing.T) {
	tests := []struct {
		limit            uint64
		total, perClient int
	}{
		{0, 384, 96}, // unknown: as for 1024
		{256, 64, 16},
		{512, 128, 32},
		{1024, 384, 96},
		{4096, 3072, 768},
		{20000, 16988, 4247}, // the limit of issue 15's report
		{65536, 56832, 14208},
		{1 << 20, 916992, 229248},
		{1 << 62, 916992, 229248}, // "unlimited" counts as 1<<20
	}
	for _, tt := range tests {
		total := defaultOpenFiles(tt.limit)
		perClient := defaultClientOpenFiles(total)
		if total != tt.total || perClient != tt.perClient {
			t.Errorf("limit %d: MaxOpenFiles %d, MaxOpenFilesPerClient %d; want %d, %d", tt.limit, total, perClient, tt.total, tt.perClient)
		}
		if tt.limit >= 1024 && tt.limit <= maxCountedLimit && uint64(total+openFilesReserve) > tt.limit {
			t.Errorf("limit %d: %d files for transfers leave less than %d for the rest", tt.limit, total, openFilesReserve)
		}
	}
}

func TestOpenFileCapsFromFields(t *testing.T) {
	soft, _, _ := openFileLimit()
	def := defaultOpenFiles(soft)
	tests := []struct {
		name                  string
		total, perClient      int // the fields
		wantTotal, wantClient int
	}{
		{"both set", 100, 30, 100, 30},
		{"per client from the total", 100, 0, 100, 25},
		{"total from the limit", 0, 7, def, 7},
		{"both from the limit", 0, 0, def, def / 4},
		{"negative means default", -1, -1, def, def / 4},
	}
	for _, tt := range tests {
		s := &Server{MaxOpenFiles: tt.total, MaxOpenFilesPerClient: tt.perClient}
		if total, perClient := s.openFileCaps(); total != tt.wantTotal || perClient != tt.wantClient {
			t.Errorf("%s: caps %d, %d; want %d, %d", tt.name, total, perClient, tt.wantTotal, tt.wantClient)
		}
	}
}

// TestFileBudget: a client gets its share, counted in files from the
// request on; the total counts a file being opened twice; refusals say
// which cap; every hold gives back exactly what it took, once.
func TestFileBudget(t *testing.T) {
	a, b := store.ClientID{1}, store.ClientID{2}
	fb := newFileBudget(8, 3, slog.New(slog.DiscardHandler))
	check := func(what string, wantUsed, wantA int) {
		t.Helper()
		used, nA := fb.inUse(a)
		if used != wantUsed || nA != wantA {
			t.Fatalf("%s: %d descriptors in use, %d files of a; want %d, %d", what, used, nA, wantUsed, wantA)
		}
	}
	refused := func(c store.ClientID, msg string) {
		t.Helper()
		h, err := fb.acquire(c)
		var pe *proto.Error
		if h != nil || !errors.As(err, &pe) || pe.Code != proto.CodeLimit || !strings.Contains(pe.Message, msg) {
			t.Fatalf("acquire for %v: %v, %v; want a CodeLimit error saying %q", c, h, err, msg)
		}
	}
	var held []*fileHold
	for range 3 {
		h, err := fb.acquire(a)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	check("three being opened", 6, 3)
	refused(a, "this client has 3 files open for transfers, the server's limit per client")
	h, err := fb.acquire(b)
	if err != nil {
		t.Fatal(err)
	}
	check("b's too", 8, 3)
	refused(b, "server busy: transfers hold as many files open as the server allows (8)")
	for _, h := range held {
		h.opened()
		h.opened() // once only
	}
	check("a's open", 5, 3)
	refused(a, "limit per client") // open or not, a file counts for its client
	held[0].release()
	held[0].release() // once only
	held[0].opened()  // nothing once released
	check("one of a's closed", 4, 2)
	if h2, err := fb.acquire(a); err != nil {
		t.Fatal(err)
	} else {
		h2.release() // never opened: gives back both
	}
	check("a hold given back unopened", 4, 2)
	h.release()
	for _, h := range held {
		h.release()
	}
	check("all given back", 0, 0)
	if used, nB := fb.inUse(b); used != 0 || nB != 0 || len(fb.byClient) != 0 {
		t.Fatalf("left: %d descriptors, %d files of b, %d clients", used, nB, len(fb.byClient))
	}
	var none *fileHold
	none.opened()
	none.release()
}

// TestFileBudgetLog: refusals are logged at most once per
// refusalLogEvery, with how many there were, and the last of a flood are
// logged once files are given back after the interval.
func TestFileBudgetLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		fb := newFileBudget(4, 1, slog.New(slog.NewTextHandler(&buf, nil)))
		lines := func() []string {
			var out []string
			for l := range strings.Lines(buf.String()) {
				out = append(out, l)
			}
			return out
		}
		a, b := store.ClientID{1}, store.ClientID{2}
		ha, _ := fb.acquire(a)
		hb, _ := fb.acquire(b)
		for range 500 {
			fb.acquire(a)
		}
		if l := lines(); len(l) != 1 || !strings.Contains(l[0], "over_client_share=1 ") {
			t.Fatalf("after 500 refusals, the log has %d lines, want 1 for the first refusal:\n%s", len(l), buf.String())
		}
		time.Sleep(refusalLogEvery / 2)
		for range 300 {
			fb.acquire(store.ClientID{3}) // over the total
		}
		ha.release() // before the interval: no line
		if l := lines(); len(l) != 1 {
			t.Fatalf("%d lines within %v, want 1:\n%s", len(l), refusalLogEvery, buf.String())
		}
		time.Sleep(refusalLogEvery / 2)
		hb.release() // after it: the rest of the flood
		l := lines()
		if len(l) != 2 || !strings.Contains(l[1], "over_total=300 over_client_share=499 within=10s") ||
			!strings.Contains(l[1], "last_client="+store.ClientID{3}.String()) {
			t.Fatalf("log after the flood:\n%s\nwant a second line with 300 over the total and 499 over a share within 10s", buf.String())
		}
		time.Sleep(2 * refusalLogEvery)
		h, _ := fb.acquire(a)
		h.release()
		if l := lines(); len(l) != 2 {
			t.Fatalf("a line with nothing refused:\n%s", buf.String())
		}
	})
}

// TestLogOpenFiles: the line qbackupd logs at start, and its warnings.
func TestLogOpenFiles(t *testing.T) {
	soft, _, ok := openFileLimit()
	if !ok {
		t.Skip("no open-file limit here")
	}
	defaultWarn := "" // a limit too low for one session's transfers is worth a warning
	if defaultClientOpenFiles(defaultOpenFiles(soft)) < DefaultMaxTransfers {
		defaultWarn = fmt.Sprintf("the open-file limit (%d) is low", soft)
	}
	tests := []struct {
		name string
		srv  *Server
		warn string // "": none
	}{
		{"defaults", &Server{}, defaultWarn},
		{"above the limit", &Server{MaxOpenFiles: int(min(soft, 1<<30))}, "leaves too little of the open-file limit"},
		{"a small share set on purpose", &Server{MaxOpenFiles: 100, MaxOpenFilesPerClient: 5}, ""},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		logOpenFiles(slog.New(slog.NewTextHandler(&buf, nil)), tt.srv)
		total, perClient := tt.srv.openFileCaps()
		info := fmt.Sprintf(`level=INFO msg="open files" limit=%d`, soft)
		caps := fmt.Sprintf("max_open_files=%d max_client_open_files=%d", total, perClient)
		if !strings.Contains(buf.String(), info) || !strings.Contains(buf.String(), caps) {
			t.Errorf("%s: logged\n%s\nwant a line with %q and %q", tt.name, buf.String(), info, caps)
		}
		if warned := strings.Contains(buf.String(), "level=WARN"); warned != (tt.warn != "") || !strings.Contains(buf.String(), tt.warn) {
			t.Errorf("%s: logged\n%s\nwant a warning saying %q (none if empty)", tt.name, buf.String(), tt.warn)
		}
	}
}

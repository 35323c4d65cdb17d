package quicsrv

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/store"
)

// Open files. An upload holds its temp file open until it is committed,
// discarded or kept for resume, and a restore the stored file it reads
// until the client is done with it. The process may hold RLIMIT_NOFILE
// descriptors in all, and MaxConnsPerClient × MaxTransfers (10,240 by
// default) transfers of one client were more than a common limit: two
// clients once took every descriptor, and another client's upload and
// restore failed with "too many open files" (CodeInternal). So the files
// transfers hold are a budget: a total that leaves room below the limit
// for everything else the process opens, and a share of it per client,
// so that no one or two clients can take it all. A request that does not
// fit is refused with CodeLimit before anything is opened.
//
// Refused, not queued: a client at its share is the one holding those
// files (a well-behaved one keeps a few hundred open at most: qbackup
// send has 8 large and 128 small files in flight per connection by
// default, never more than MaxTransfers, and a restore 8), and a flood
// that fills the total holds its files as long as it likes (an idle
// upload until the transfer timeout); waiting would pin the request's
// goroutine, and a restore request, which the control loop handles
// itself, would stop the very commits and RestoreDones that give files
// back.
//
// A file being opened counts twice toward the total: os.Root resolves a
// path one directory at a time, so opening a stored file (or a temp file
// to resume) holds a directory and then the file for a moment. Toward a
// client's share every file counts once, from the request until the file
// is closed.

// openFilesReserve is the part of the open-file limit kept for what the
// process holds besides transfers' files, counted for the defaults:
// the store's held directories (up to 256), its root, tmp/ and lock file;
// up to 32 SQLite connections with the database, its log and its shared
// memory open each (96), and their temporary files; the UDP socket,
// stdin, stdout, stderr and the runtime's poller; the scrub's and a
// recheck's file with a directory of its path each. That is about 400;
// 512 rounds it up. defaultOpenFiles keeps an eighth of the limit on top,
// a margin for what this count misses.
const openFilesReserve = 512

// maxCountedLimit bounds the open-file limit the defaults are computed
// from: Linux allows no more than 1<<20 (fs.nr_open) unless raised, and
// an "unlimited" elsewhere is no count to take a share of.
const maxCountedLimit = 1 << 20

// fallbackOpenFileLimit stands in for the limit where it cannot be read.
const fallbackOpenFileLimit = 1024

// openingCost is what a file being opened counts toward the total.
const openingCost = 2

// defaultOpenFiles is the default of MaxOpenFiles for an open-file limit:
// the limit less openFilesReserve and an eighth of it, but at least a
// quarter of it, so that a server under a small limit still serves some
// transfers (qbackupd warns about such a limit).
func defaultOpenFiles(limit uint64) int {
	if limit == 0 {
		limit = fallbackOpenFileLimit
	}
	l := int(min(limit, maxCountedLimit))
	return max(l-openFilesReserve-l/8, l/4, 1)
}

// defaultClientOpenFiles is the default of MaxOpenFilesPerClient for a
// total: a quarter, so that two clients hold at most half and it takes
// four to fill it.
func defaultClientOpenFiles(total int) int { return max(total/4, 1) }

// openFileCaps returns the caps on transfers' open files in force: the
// fields, or their defaults, computed from the process's open-file limit.
func (s *Server) openFileCaps() (total, perClient int) {
	total = s.MaxOpenFiles
	if total <= 0 {
		soft, _, _ := openFileLimit()
		total = defaultOpenFiles(soft)
	}
	perClient = s.MaxOpenFilesPerClient
	if perClient <= 0 {
		perClient = defaultClientOpenFiles(total)
	}
	return total, perClient
}

// files returns the server's budget of open files.
func (s *Server) files() *fileBudget {
	s.filesOnce.Do(func() {
		total, perClient := s.openFileCaps()
		s.openFiles = newFileBudget(total, perClient, s.logger())
	})
	return s.openFiles
}

// holdFile reserves a file for a transfer of client c, to be opened next;
// see fileBudget.acquire.
func (s *Server) holdFile(c store.ClientID) (*fileHold, error) {
	return s.files().acquire(c)
}

// fileBudget counts the files transfers hold open: descriptors in all
// (with openingCost for a file being opened) against total, files per
// client against perClient.
type fileBudget struct {
	total, perClient int
	log              *slog.Logger

	mu       sync.Mutex
	used     int                    // descriptors held
	byClient map[store.ClientID]int // files held per client
	// Refusals not logged yet, since the first of them; and when the
	// last line was logged.
	overTotal, overClient int
	since, logged         time.Time
	lastClient            store.ClientID
}

func newFileBudget(total, perClient int, log *slog.Logger) *fileBudget {
	return &fileBudget{total: total, perClient: perClient, log: log, byClient: make(map[store.ClientID]int)}
}

// acquire reserves a file for a transfer of client c, to be opened next,
// or fails with CodeLimit when c holds its share or the total is reached.
// The caller calls opened once the file is open, and release once it is
// closed (or was never opened).
func (b *fileBudget) acquire(c store.ClientID) (*fileHold, error) {
	b.mu.Lock()
	n := b.byClient[c]
	var err error
	switch {
	case n >= b.perClient:
		b.overClient++
		err = proto.Errorf(proto.CodeLimit, "this client has %d files open for transfers, the server's limit per client; let some finish or try again later", n)
	case b.used+openingCost > b.total:
		b.overTotal++
		err = proto.Errorf(proto.CodeLimit, "server busy: transfers hold as many files open as the server allows (%d); try again later", b.total)
	default:
		b.byClient[c] = n + 1
		b.used += openingCost
		b.mu.Unlock()
		return &fileHold{b: b, client: c, held: openingCost}, nil
	}
	if b.since.IsZero() {
		b.since = time.Now()
	}
	b.lastClient = c
	line := b.refusalsLocked()
	b.mu.Unlock()
	line.log(b.log)
	return nil, err
}

// give returns descriptors of client c; file says c's file is closed.
func (b *fileBudget) give(c store.ClientID, descriptors int, file bool) {
	b.mu.Lock()
	b.used -= descriptors
	if b.used < 0 {
		panic("quicsrv: open files released more than acquired")
	}
	if file {
		if b.byClient[c]--; b.byClient[c] <= 0 {
			delete(b.byClient, c)
		}
	}
	var line refusalLine
	if file && !b.since.IsZero() {
		line = b.refusalsLocked() // the last refusals, once the flood ebbs
	}
	b.mu.Unlock()
	line.log(b.log)
}

// refusalsLocked returns the line to log about the refusals counted, and
// starts counting afresh, if refusalLogEvery has passed since the last
// line; otherwise a line that logs nothing. The caller holds b.mu.
func (b *fileBudget) refusalsLocked() refusalLine {
	now := time.Now()
	if b.overTotal+b.overClient == 0 || (!b.logged.IsZero() && now.Sub(b.logged) < refusalLogEvery) {
		return refusalLine{}
	}
	l := refusalLine{
		overTotal: b.overTotal, overClient: b.overClient,
		over:  now.Sub(b.since),
		inUse: b.used, total: b.total, perClient: b.perClient,
		client: b.lastClient,
	}
	b.overTotal, b.overClient = 0, 0
	b.since, b.logged = time.Time{}, now
	return l
}

// refusalLine is one log line about refused transfers; the zero value
// logs nothing.
type refusalLine struct {
	overTotal, overClient int
	over                  time.Duration
	inUse                 int
	total, perClient      int
	client                store.ClientID
}

func (l refusalLine) log(log *slog.Logger) {
	if l.overTotal+l.overClient == 0 {
		return
	}
	log.Warn("refused transfers: too many files open; see --max-open-files",
		"over_total", l.overTotal, "over_client_share", l.overClient, "within", l.over.Round(time.Millisecond).String(),
		"in_use", l.inUse, "max_open_files", l.total, "max_client_open_files", l.perClient, "last_client", l.client.String())
}

// inUse reports the descriptors held and the files held by client c.
func (b *fileBudget) inUse(c store.ClientID) (descriptors, files int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.byClient[c]
}

// fileHold is one transfer's file in the budget. Its methods may be
// called on nil (a transfer that holds no file), and release more than
// once.
type fileHold struct {
	b      *fileBudget
	client store.ClientID

	mu   sync.Mutex
	held int // descriptors: openingCost while opening, 1 once open, 0 once released
}

// opened says the file is open: it counts once from now on.
func (h *fileHold) opened() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == openingCost {
		h.held = 1
		h.b.give(h.client, openingCost-1, false)
	}
}

// release gives the file back: it is closed, or was never opened.
func (h *fileHold) release() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held > 0 {
		h.b.give(h.client, h.held, true)
		h.held = 0
	}
}

// logOpenFiles logs the open-file limit in force and the caps on
// transfers' files, and warns when they leave little room.
func logOpenFiles(log *slog.Logger, srv *Server) {
	total, perClient := srv.openFileCaps()
	soft, hard, ok := openFileLimit()
	if !ok {
		log.Info("open files: the limit cannot be read here", "max_open_files", total, "max_client_open_files", perClient)
		return
	}
	log.Info("open files", "limit", soft, "hard_limit", hard, "max_open_files", total, "max_client_open_files", perClient)
	switch room := defaultOpenFiles(soft); {
	case total > room:
		log.Warn(fmt.Sprintf("--max-open-files %d leaves too little of the open-file limit (%d) for the rest of the server, whose own files may then fail with 'too many open files'; lower it to %d or raise the limit (LimitNOFILE= in a systemd unit, ulimit -n)", total, soft, room))
	case srv.MaxOpenFiles <= 0 && srv.MaxOpenFilesPerClient <= 0 && perClient < srv.maxTransfers():
		log.Warn(fmt.Sprintf("the open-file limit (%d) is low: a client may hold only %d files open for transfers, fewer than the %d transfers of one session; raise it (LimitNOFILE= in a systemd unit, ulimit -n)", soft, perClient, srv.maxTransfers()))
	}
}

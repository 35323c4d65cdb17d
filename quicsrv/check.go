package quicsrv

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/store"
)

// Damage on the server's disk: three ways to find it, all through
// store.Check and store.CheckVersion, which mark a damaged version (the
// server then refuses to restore it, with CodeDamaged, and treats the
// file as changed, so the client's next send uploads it and heals it):
//
//   - qbackupd check, run by the operator (cli.go);
//   - the scrub, when Server.ScrubEvery is set: a goroutine of the
//     server that re-reads each version about once per period, politely
//     (below);
//   - a recheck of one version whose restore did not match: the client
//     said so (RestoreDone with DoneMismatch) or the server's own cksum
//     of the file on its way out differed.

// fileSums is the store.SumFunc of qbackupd check and of rechecks: the
// checksums a client compares, read at full speed. The store's reader
// fails once ctx is done.
func fileSums(_ context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
	return proto.FileChecksums(r, size)
}

// DefaultScrubRate is how fast the scrub reads by default, in bytes per
// second: a fraction of a disk's sequential speed.
const DefaultScrubRate = 64 << 20

// scrubStep is how much the scrub reads between two waits of its pacer:
// one read of the hasher's buffer.
const scrubStep = 1 << 20

// minScrubWake bounds how often the scrub looks for versions due.
const minScrubWake = 10 * time.Millisecond

func (s *Server) scrubRate() int64 {
	if s.ScrubRate > 0 {
		return s.ScrubRate
	}
	return DefaultScrubRate
}

// scrub checks the stored versions that were neither stored nor checked
// in the last ScrubEvery, and looks for more such versions every
// ScrubEvery or every hour, whichever is sooner, until ctx ends. One
// goroutine runs it, so passes never overlap. Because the versions
// chosen are those not checked for a period, a restarted server carries
// on where the last one stopped, and a version the operator's qbackupd
// check just read is not read again.
//
// It is polite to the transfers it shares the disk with: one file at a
// time, read front to back at no more than ScrubRate bytes a second, and
// dropped from the page cache behind it (see store.Check).
func (s *Server) scrub(ctx context.Context) {
	every := s.ScrubEvery
	wake := max(min(every, time.Hour), minScrubWake)
	p := &pacer{rate: s.scrubRate(), read: &s.scrubRead}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.scrubPass(ctx, time.Now().Add(-every), p)
		t.Reset(wake)
	}
}

// scrubPass checks the versions stored and last checked before due, and
// logs what it found.
func (s *Server) scrubPass(ctx context.Context, due time.Time, p *pacer) {
	log := s.logger()
	start := time.Now()
	p.restart()
	st, err := s.Store.Check(ctx, store.CheckOptions{
		DueBefore: due,
		Sum:       p.sums,
		Checked: func(r store.CheckResult) {
			logCheck(log.With("client", r.ClientName, "id", r.Client.String()), r)
		},
	})
	switch {
	case err != nil && ctx.Err() != nil:
		log.Info("scrub stopped by the shutdown; the next start carries on", "versions", st.Versions, "damaged", st.Damaged)
		return
	case err != nil:
		log.Warn("scrub failed; it tries again later", "err", err, "versions", st.Versions, "damaged", st.Damaged)
		return
	case st.Versions == 0 && st.Changing == 0:
		return
	}
	log.Info("scrub done", "versions", st.Versions, "bytes", st.Bytes, "clients", st.Clients,
		"damaged", st.Damaged, "cleared", st.Cleared, "elapsed", time.Since(start).Round(time.Millisecond).String())
}

// logCheck logs the result of a check of one version of the client log
// is about: damage at Warn, a mark cleared at Info, the rest at Debug.
func logCheck(log *slog.Logger, r store.CheckResult) {
	args := []any{"name", r.Name, "version", r.Version}
	switch {
	case r.Damage != store.DamageNone:
		log.Warn("stored version is damaged; restores of it are refused until its client sends the file again",
			append(args, "damage", r.Damage.String(), "detail", r.Detail)...)
	case r.WasDamaged:
		log.Info("damaged version found intact again; mark cleared", args...)
	default:
		log.Debug("checked", append(args, "size", r.Size)...)
	}
}

// pacer spreads a scrub's reads over time: rate bytes a second at most.
type pacer struct {
	rate  int64
	read  *atomic.Int64 // bytes read, all passes together (for tests)
	start time.Time
	n     int64 // bytes read since start
}

// restart begins a new stretch of reading.
func (p *pacer) restart() { p.start, p.n = time.Now(), 0 }

// wait counts n bytes read, and sleeps until they fit the rate (or ctx
// ends). A pacer more than a second behind (reads slower than the rate,
// or a pause) starts afresh rather than catch up in a burst.
func (p *pacer) wait(ctx context.Context, n int64) error {
	if p.read != nil {
		p.read.Add(n)
	}
	if time.Since(p.start)-p.took(p.n) > time.Second {
		p.restart()
	}
	p.n += n
	ahead := p.took(p.n) - time.Since(p.start)
	if ahead <= 0 {
		return nil
	}
	t := time.NewTimer(ahead)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// took is how long reading n bytes takes at the rate.
func (p *pacer) took(n int64) time.Duration {
	return time.Duration(float64(n) / float64(p.rate) * float64(time.Second))
}

// sums is the scrub's store.SumFunc: fileSums a step at a time, with the
// pacer's waits in between.
func (p *pacer) sums(ctx context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
	var h proto.FileHasher
	for h.Len() < size {
		from := h.Len()
		if err := h.HashTo(r, min(size, from+scrubStep)); err != nil {
			return 0, [32]byte{}, err
		}
		if err := p.wait(ctx, h.Len()-from); err != nil {
			return 0, [32]byte{}, err
		}
	}
	crc, sha := h.Sum()
	return crc, sha, nil
}

// Rechecks are bounded: at most maxRechecks versions waiting or being
// checked, maxClientRechecks of them of one client, one checked at a
// time, each version once however often it is asked for.
const (
	maxRechecks       = 16
	maxClientRechecks = 2
)

// recheckRef names a version to check again.
type recheckRef struct {
	client  store.ClientID
	name    string
	version int
}

// recheckJob is a version to check again, with a log about its client.
type recheckJob struct {
	ref recheckRef
	log *slog.Logger
}

// rechecker checks again, one at a time, the versions whose restore did
// not match, so that a damaged one is marked before the client's next
// attempt, which then hears CodeDamaged at once instead of downloading
// the file again only to find it bad.
type rechecker struct {
	// start runs a function in a goroutine the server owns, unless the
	// server is shutting down (false); run checks one version.
	start func(func(context.Context)) bool
	run   func(context.Context, recheckJob)

	mu      sync.Mutex
	queue   []recheckJob
	pending map[recheckRef]bool // queued or being checked
	running bool                // a goroutine works through queue
}

// add queues j unless its version is queued or being checked already, or
// the queue is full (then it is dropped: a client that retries asks
// again). It reports whether j was queued.
func (rc *rechecker) add(j recheckJob) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.pending[j.ref] || len(rc.pending) >= maxRechecks {
		return false
	}
	n := 0
	for ref := range rc.pending {
		if ref.client == j.ref.client {
			n++
		}
	}
	if n >= maxClientRechecks {
		return false
	}
	if !rc.running {
		if !rc.start(rc.work) {
			return false
		}
		rc.running = true
	}
	if rc.pending == nil {
		rc.pending = make(map[recheckRef]bool)
	}
	rc.pending[j.ref] = true
	rc.queue = append(rc.queue, j)
	return true
}

// work checks the queued versions until none is left.
func (rc *rechecker) work(ctx context.Context) {
	for {
		rc.mu.Lock()
		if len(rc.queue) == 0 {
			rc.running = false
			rc.mu.Unlock()
			return
		}
		j := rc.queue[0]
		rc.queue = rc.queue[1:]
		rc.mu.Unlock()
		rc.run(ctx, j)
		rc.mu.Lock()
		delete(rc.pending, j.ref)
		rc.mu.Unlock()
	}
}

// recheck has the version fv of the session's client checked again, in
// the background; why says what the restore saw.
func (ss *session) recheck(fv store.FileVersion, why string) {
	log := ss.srv.logger().With("client", ss.client.Name, "id", ss.client.ID.String())
	j := recheckJob{ref: recheckRef{ss.client.ID, fv.Name, fv.Version}, log: log}
	if ss.srv.rechecks().add(j) {
		ss.log.Warn(why+"; checking the stored version again", "name", fv.Name, "version", fv.Version)
	} else {
		ss.log.Debug(why+"; a check of the stored version is already queued, or too many are", "name", fv.Name, "version", fv.Version)
	}
}

// rechecks returns the server's rechecker.
func (s *Server) rechecks() *rechecker {
	s.recheckOnce.Do(func() {
		s.recheck = &rechecker{start: s.goBackground, run: s.runRecheck}
	})
	return s.recheck
}

// runRecheck checks one version again and logs what it found.
func (s *Server) runRecheck(ctx context.Context, j recheckJob) {
	r, recorded, err := s.Store.CheckVersion(ctx, j.ref.client, j.ref.name, j.ref.version, fileSums)
	switch {
	case err != nil && ctx.Err() != nil:
		j.log.Debug("check of a stored version stopped by the shutdown", "name", j.ref.name, "version", j.ref.version)
	case err != nil:
		j.log.Warn("checking a stored version again failed", "name", j.ref.name, "version", j.ref.version, "err", err)
	case !recorded:
		j.log.Debug("stored version changed while it was checked again (healed); nothing recorded", "name", j.ref.name, "version", j.ref.version)
	case r.Damage == store.DamageNone:
		j.log.Info("stored version checked again: it is intact", "name", r.Name, "version", r.Version)
	default:
		logCheck(j.log, r)
	}
}

package quicsrv

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// budget is a count of bytes shared by every connection: the memory the
// server lets clients make it hold (QUIC receive windows and chunk
// buffers). Waiters are served first come, first served, so a stream
// asking for a large chunk is not starved by a flow of small ones.
type budget struct {
	mu      sync.Mutex
	size    int64
	used    int64
	waiters []*budgetWaiter
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed when the bytes are granted
}

func newBudget(size int64) *budget { return &budget{size: size} }

// tryAcquire takes n bytes if they are free now and nobody is waiting.
func (b *budget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.waiters) == 0 && b.used+n <= b.size {
		b.used += n
		return true
	}
	return false
}

// acquire takes n bytes, waiting until they are free or ctx ends. A
// request larger than the whole budget waits until it is the only user.
func (b *budget) acquire(ctx context.Context, n int64) error {
	b.mu.Lock()
	if len(b.waiters) == 0 && (b.used+n <= b.size || b.used == 0) {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			b.mu.Unlock()
			b.release(n)
		default:
			for i, o := range b.waiters {
				if o == w {
					b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
					break
				}
			}
			b.grantLocked() // the head may have changed
			b.mu.Unlock()
		}
		return ctx.Err()
	}
}

// release returns n bytes and wakes the waiters they satisfy.
func (b *budget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.used < 0 {
		panic("quicsrv: budget released more than acquired")
	}
	b.grantLocked()
}

func (b *budget) grantLocked() {
	for len(b.waiters) > 0 {
		w := b.waiters[0]
		if b.used+w.n > b.size && b.used != 0 {
			return
		}
		b.used += w.n
		close(w.ready)
		b.waiters = b.waiters[1:]
	}
}

// inUse reports the bytes taken.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// account is one client's share of the budget: what the client's
// sessions make the server hold (receive window growth, the buffers of
// chunks being received and sent) counts against both the client's own
// share and the server's budget, so that one client, however many
// connections and transfers it opens, cannot take it all.
type account struct {
	share *budget // this client's
	all   *budget // the server's
}

// tryAcquire takes n bytes from both, if both have them now.
func (a *account) tryAcquire(n int64) bool {
	if !a.share.tryAcquire(n) {
		return false
	}
	if !a.all.tryAcquire(n) {
		a.share.release(n)
		return false
	}
	return true
}

// acquire takes n bytes from both, waiting in the client's queue first,
// then in the server's; the order is always the same, so no two waiters
// hold what the other waits for.
func (a *account) acquire(ctx context.Context, n int64) error {
	if err := a.share.acquire(ctx, n); err != nil {
		return err
	}
	if err := a.all.acquire(ctx, n); err != nil {
		a.share.release(n)
		return err
	}
	return nil
}

// release gives n bytes back to both.
func (a *account) release(n int64) {
	a.all.release(n)
	a.share.release(n)
}

// refusalLog rate-limits the log lines of refusals a stranger can cause
// at will (connections refused or closed to make room): one line per
// message at most every refusalLogEvery, counting those in between, so
// that a flood costs a few lines, not one each.
type refusalLog struct {
	mu   sync.Mutex
	last map[string]time.Time
	n    map[string]int
}

const refusalLogEvery = 10 * time.Second

// note counts one refusal of kind msg and logs it if its line is due.
func (r *refusalLog) note(log *slog.Logger, msg string, args ...any) {
	r.mu.Lock()
	if r.last == nil {
		r.last, r.n = make(map[string]time.Time), make(map[string]int)
	}
	r.n[msg]++
	now := time.Now()
	if now.Sub(r.last[msg]) < refusalLogEvery {
		r.mu.Unlock()
		return
	}
	n := r.n[msg]
	r.n[msg], r.last[msg] = 0, now
	r.mu.Unlock()
	log.Warn(msg, append(args, "count", n, "in", refusalLogEvery.String())...)
}

package quicsrv

import (
	"context"
	"sync"
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

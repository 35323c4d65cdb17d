package quicsrv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qbackup/qbackup/store"
)

// TestRechecker: rechecks run one at a time, each version once however
// often it is asked for while queued or running, and no more than
// maxRechecks in all and maxClientRechecks of one client wait.
func TestRechecker(t *testing.T) {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		running int
		most    int
		ran     []recheckRef
		closed  bool
	)
	release := make(chan struct{})
	rc := &rechecker{
		start: func(fn func(context.Context)) bool {
			mu.Lock()
			defer mu.Unlock()
			if closed {
				return false
			}
			wg.Go(func() { fn(t.Context()) })
			return true
		},
		run: func(_ context.Context, j recheckJob) {
			mu.Lock()
			running++
			most = max(most, running)
			ran = append(ran, j.ref)
			mu.Unlock()
			<-release
			mu.Lock()
			running--
			mu.Unlock()
		},
	}
	a, b := store.ClientID{1}, store.ClientID{2}
	job := func(c store.ClientID, name string, v int) recheckJob {
		return recheckJob{ref: recheckRef{c, name, v}}
	}
	type step struct {
		what string
		job  recheckJob
		want bool // queued
	}
	steps := []step{
		{"first", job(a, "x", 1), true},
		{"the same version again", job(a, "x", 1), false},
		{"another version", job(a, "x", 2), true},
		{"a third of one client", job(a, "y", 1), false},
		{"another client", job(b, "x", 1), true},
		{"the same again", job(b, "x", 1), false},
	}
	queued := 3
	for i := 3; queued < maxRechecks; i++ {
		steps = append(steps, step{fmt.Sprintf("client %d", i), job(store.ClientID{byte(i)}, "x", 1), true})
		queued++
	}
	steps = append(steps, step{"one too many", job(store.ClientID{0xff}, "x", 1), false})
	for _, st := range steps {
		if got := rc.add(st.job); got != st.want {
			t.Errorf("%s: add(%v) = %v, want %v", st.what, st.job.ref, got, st.want)
		}
	}
	close(release)
	wg.Wait()
	if most != 1 {
		t.Errorf("%d rechecks ran at once, want 1", most)
	}
	if len(ran) != queued {
		t.Errorf("%d rechecks ran, want %d", len(ran), queued)
	}
	seen := make(map[recheckRef]bool)
	for _, ref := range ran {
		if seen[ref] {
			t.Errorf("%v checked twice", ref)
		}
		seen[ref] = true
	}

	// Done, a version may be checked again; a server shutting down
	// starts none.
	if !rc.add(job(a, "x", 1)) {
		t.Error("a version checked before could not be queued again")
	}
	wg.Wait()
	mu.Lock()
	closed = true
	mu.Unlock()
	if rc.add(job(a, "x", 1)) {
		t.Error("a recheck was queued while the server shuts down")
	}
	if len(rc.pending) != 0 || len(rc.queue) != 0 {
		t.Errorf("left pending %v, queued %v", rc.pending, rc.queue)
	}
}

// TestPacer: the scrub's pacer holds its rate, does not make up for a
// pause with a burst, and stops waiting when its context ends.
func TestPacer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate = 10 << 20
		p := &pacer{rate: rate}
		p.restart()
		steps := []struct {
			what  string
			pause time.Duration // before the reads
			reads int           // of 1 MiB
			want  time.Duration
		}{
			{"20 MiB at 10 MiB/s", 0, 20, 2 * time.Second},
			{"after a pause, no burst", 10 * time.Second, 10, time.Second},
		}
		for _, st := range steps {
			time.Sleep(st.pause)
			start := time.Now()
			for range st.reads {
				if err := p.wait(t.Context(), 1<<20); err != nil {
					t.Fatal(err)
				}
			}
			if got := time.Since(start); got < st.want-time.Millisecond || got > st.want+time.Millisecond {
				t.Errorf("%s: took %v, want %v", st.what, got, st.want)
			}
		}

		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error)
		go func() { errc <- p.wait(ctx, 1<<30) }() // 100 s at the rate
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("wait after cancel = %v, want context.Canceled", err)
		}
	})
}

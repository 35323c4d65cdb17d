package quicsrv

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

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

package quiccli

import (
	"context"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qbackup/qbackup/proto"
)

// TestSendLoad: how much a connection may queue follows the rate it has
// written at, while it was busy.
func TestSendLoad(t *testing.T) {
	const mib = 1 << 20
	t0 := time.Unix(1e9, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type step struct {
		add  bool // queue n bytes; else n bytes written (or dropped if !ok)
		n    int64
		ok   bool
		ms   int
		room bool // may it queue more afterwards
	}
	tests := []struct {
		name  string
		steps []step
		rate  float64 // bytes per second at the end
	}{
		{"unmeasured: two chunks", []step{
			{add: true, n: mib, ms: 0, room: true},
			{add: true, n: mib, ms: 0, room: false},
		}, 0},
		{"slow link: one chunk at a time", []step{
			// 1 MiB in 4 s: 256 KiB/s, 512 KiB in the horizon, below a chunk.
			{add: true, n: mib, ms: 0, room: true},
			{add: true, n: mib, ms: 0, room: false},
			{n: mib, ok: true, ms: 4000, room: false},
			{n: mib, ok: true, ms: 8000, room: true},
			{add: true, n: mib, ms: 8000, room: false},
		}, mib / 4},
		{"fast link: what drains in the horizon", []step{
			// 2 MiB in 250 ms: 8 MiB/s, 16 MiB in the horizon.
			{add: true, n: 2 * mib, ms: 0, room: false},
			{n: mib, ok: true, ms: 100, room: true}, // too short a sample
			{n: mib, ok: true, ms: 250, room: true},
			{add: true, n: 15 * mib, ms: 250, room: true},
			{add: true, n: mib, ms: 250, room: false},
		}, 8 * mib},
		{"idle time does not count", []step{
			{add: true, n: mib, ms: 0, room: true},
			{n: mib, ok: true, ms: 500, room: true}, // 2 MiB/s
			{add: true, n: mib, ms: 10_500, room: true},
			{n: mib, ok: true, ms: 11_000, room: true}, // 2 MiB/s again, not 1 MiB in 10.5 s
		}, 2 * mib},
		{"a dropped chunk frees its room but is no sample", []step{
			{add: true, n: 2 * mib, ms: 0, room: false},
			{n: mib, ok: false, ms: 300, room: true},
		}, 0},
		{"smoothed", []step{
			{add: true, n: mib, ms: 0, room: true},
			{n: mib, ok: true, ms: 1000, room: true}, // 1 MiB/s
			{add: true, n: mib, ms: 1000, room: true},
			{n: mib, ok: true, ms: 1250, room: true}, // 4 MiB/s
		}, 0.75*mib + 0.25*4*mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l sendLoad
			for i, st := range tt.steps {
				if st.add {
					l.add(st.n, at(st.ms))
				} else {
					l.done(st.n, st.ok, at(st.ms))
				}
				if _, ok := l.room(mib); ok != st.room {
					t.Fatalf("step %d: room %v, want %v (queued %d, rate %.0f)", i, ok, st.room, l.queued, l.rate)
				}
			}
			if l.rate != tt.rate {
				t.Errorf("rate %.0f, want %.0f", l.rate, tt.rate)
			}
		})
	}
}

// TestPickWaitsForRoom: pick gives a chunk to the connection with the
// least queued among those with room, and waits while none has any.
func TestPickWaitsForRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const mib = 1 << 20
		ctx, cancel := context.WithCancelCause(t.Context())
		defer cancel(nil)
		s, p := testSession(ctx, cancel, mib), testSession(ctx, cancel, mib)
		rs := &routeSet{s: s}
		for _, x := range []*Session{s, p} {
			r, _ := testRoute(t, x)
			rs.list = append(rs.list, r)
		}
		now := time.Now()

		s.load.add(mib, now)
		if r, err := rs.pick(ctx); err != nil || r.s != p {
			t.Fatalf("pick with s holding a chunk: %v, %v; want the idle peer", r, err)
		}
		p.load.add(2*mib, now)
		if r, err := rs.pick(ctx); err != nil || r.s != s {
			t.Fatalf("pick with the peer full: %v, %v; want s", r, err)
		}
		s.load.add(mib, now)

		got := pickAsync(ctx, rs)
		mustBlock(t, got, "while every connection was full")
		p.load.done(mib, true, time.Now())
		s.chunkWritten()
		if r := <-got; r.s != p {
			t.Errorf("after the peer wrote a chunk, pick chose %p; want the peer %p", r.s, p)
		}

		p.load.add(mib, now)
		ended := make(chan error)
		go func() {
			_, err := rs.pick(ctx)
			ended <- err
		}()
		synctest.Wait()
		cancel(context.Canceled)
		if err := <-ended; err == nil {
			t.Error("pick returned no error after its session ended")
		}
	})
}

// TestPickBoundsTheGroup: however fast each connection, all of them
// together queue at most groupQueueChunks.
func TestPickBoundsTheGroup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const mib = 1 << 20
		ctx, cancel := context.WithCancelCause(t.Context())
		defer cancel(nil)
		s := testSession(ctx, cancel, mib)
		rs := &routeSet{s: s}
		for range groupQueueChunks + 8 {
			p := testSession(ctx, cancel, mib)
			p.load.rate = 1 << 40 // room for as much as its sender takes
			r, _ := testRoute(t, p)
			rs.list = append(rs.list, r)
		}
		now := time.Now()
		for i := range groupQueueChunks {
			r, err := rs.pick(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r.s.load.queued != 0 {
				t.Fatalf("chunk %d went to a connection with %d bytes queued while others had none", i, r.s.load.queued)
			}
			r.s.load.add(mib, now)
		}
		got := pickAsync(ctx, rs)
		mustBlock(t, got, "with a full group's chunks queued")
		first := rs.list[0].s
		first.load.done(mib, true, time.Now())
		s.chunkWritten()
		if r := <-got; r.s.load.queued != 0 {
			t.Errorf("after a chunk was written, pick chose a connection with %d bytes queued", r.s.load.queued)
		}
	})
}

// pickAsync runs rs.pick in a goroutine of the bubble and waits until it
// has returned or blocks: its route is then on the channel, or not yet.
func pickAsync(ctx context.Context, rs *routeSet) <-chan *route {
	got := make(chan *route, 1)
	go func() {
		r, _ := rs.pick(ctx)
		got <- r
	}()
	synctest.Wait()
	return got
}

// testRoute is a route over s with a chunk sender of its own that is never
// given a chunk (its streams cannot be opened); fail makes the sender fail.
func testRoute(t *testing.T, s *Session) (r *route, fail func()) {
	var key proto.SessionKey
	sealer, err := proto.NewSealer(&key, proto.ClientToServer)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	t.Cleanup(cancel)
	open := func(context.Context) (io.WriteCloser, error) { return nil, errors.New("test: no streams") }
	return &route{s: s, sender: proto.NewChunkSender(ctx, sealer, 1, s.chunkSize, open)}, cancel
}

// testSession is a session, not connected, with chunks of size chunk.
func testSession(ctx context.Context, cancel context.CancelCauseFunc, chunk int) *Session {
	return &Session{ctx: ctx, cancel: cancel, chunkSize: chunk}
}

// mustBlock fails if pickAsync's pick returned.
func mustBlock(t *testing.T, got <-chan *route, why string) {
	t.Helper()
	select {
	case r := <-got:
		t.Fatalf("pick returned %p %s", r.s, why)
	default:
	}
}

// TestPickReturnsAFailedRoute: a route whose sender has failed is picked
// at once, full or not, so that its error comes out instead of a wait for
// room its queued chunks may never free.
func TestPickReturnsAFailedRoute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const mib = 1 << 20
		ctx, cancel := context.WithCancelCause(t.Context())
		defer cancel(nil)
		s := testSession(ctx, cancel, mib)
		r, stop := testRoute(t, s)
		rs := &routeSet{s: s, list: []*route{r}}
		s.load.add(2*mib, time.Now()) // full, and never to be written
		got := pickAsync(ctx, rs)
		mustBlock(t, got, "while the only connection was full")
		stop() // the sender fails; nothing is written, nothing wakes pick ...
		// ... until it looks again: a new peer or a written chunk elsewhere.
		s.chunkWritten()
		if got := <-got; got != r || got.sender.Err() == nil {
			t.Errorf("pick returned %v; want the failed route", got)
		}
	})
}

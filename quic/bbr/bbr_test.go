package bbr

import (
	"fmt"
	"testing"
	"time"
)

// The tests below run the controller on the simulated link of
// sim_test.go. Each states what it asserts in round trips of the path
// and in shares of the link, and logs the figures it measured, so that a
// failure says how far off it was.

// skipUnderRace skips a long simulation in a -race build.
func skipUnderRace(t *testing.T) {
	t.Helper()
	if raceBuild {
		t.Skip("a long single-goroutine simulation: scripts/test runs it without -race")
	}
}

// rtts is n round trips of the link l.
func rtts(l *link, n float64) time.Duration {
	return time.Duration(n * float64(2*l.delay))
}

func TestStartupConvergence(t *testing.T) {
	for _, tc := range []struct {
		name      string
		rate      float64 // Mbit/s
		rtt       time.Duration
		maxRounds float64 // to reach 90% of the link
	}{
		// From a 32-packet window, doubling each round trip: 100 Mbit/s
		// and 80 ms hold 833 packets, about 5 doublings, plus a round
		// or two to see the rate and Startup's own round trips.
		{"100mbit-80ms", 100, 80 * time.Millisecond, 12},
		{"20mbit-300ms", 20, 300 * time.Millisecond, 12},
		{"100mbit-20ms", 100, 20 * time.Millisecond, 12},
		{"1gbit-10ms", 1000, 10 * time.Millisecond, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &link{rate: mbit(tc.rate), delay: tc.rtt / 2}
			l.queue = l.bdp()
			s := newSim(t, 1, l)
			c := newBBR(1, tc.rtt)
			f := s.addFlow(c, secs(0), 0)
			end := secs(0).Add(rtts(l, 40))
			s.run(end)
			at := f.reachedAt(secs(0), rtts(l, 1), 0.9*l.rate, end)
			rounds := float64(at.Sub(secs(0))) / float64(rtts(l, 1))
			t.Logf("90%% of the link after %.1f round trips; state %v, window %.2f BDP", rounds, c.State(), float64(c.Window())/float64(l.bdp()))
			if at == 0 || rounds > tc.maxRounds {
				t.Errorf("reached 90%% of the link after %.1f round trips (0: never), want at most %v", rounds, tc.maxRounds)
			}
			if c.State() != ProbeBW {
				t.Errorf("after 40 round trips the controller is in %v, want %v", c.State(), ProbeBW)
			}
		})
	}
}

// TestRandomLoss: loss that is not congestion does not slow the
// controller (as it does not slow Linux TCP BBR), and what it keeps in
// flight stays about what the path holds.
func TestRandomLoss(t *testing.T) {
	skipUnderRace(t)
	for _, tc := range []struct {
		loss    float64
		minUtil float64 // goodput over the link's rate, from 5 to 30 s
		minSec  float64 // the same, in every one-second window
	}{
		{0, 0.97, 0.9},
		{0.01, 0.95, 0.85},
		{0.02, 0.95, 0.85},
		{0.05, 0.90, 0.8},
	} {
		for _, lk := range []struct {
			rate float64
			rtt  time.Duration
		}{{100, 80 * time.Millisecond}, {20, 300 * time.Millisecond}} {
			t.Run(fmt.Sprintf("%vmbit-%v-loss%v%%", lk.rate, lk.rtt, 100*tc.loss), func(t *testing.T) {
				l := &link{rate: mbit(lk.rate), delay: lk.rtt / 2, loss: tc.loss}
				l.queue = l.bdp()
				s := newSim(t, 1, l)
				c := newBBR(1, lk.rtt)
				f := s.addFlow(c, secs(0), 0)
				s.measureFrom = secs(5)
				s.run(secs(30))
				util := f.rate(secs(5), secs(30)) / l.rate
				worst := 1.0
				for i := 5; i < 30; i++ {
					worst = min(worst, f.rate(secs(float64(i)), secs(float64(i+1)))/l.rate)
				}
				inflight := float64(f.meanInflight()) / float64(l.bdp())
				t.Logf("goodput %.1f%% of the link (worst second %.1f%%), mean in flight %.2f BDP, mean queue %v, background loss %.3f",
					100*util, 100*worst, inflight, l.meanQueue(), c.Stats().BgLoss)
				if util < tc.minUtil || worst < tc.minSec {
					t.Errorf("goodput %.1f%% (worst second %.1f%%), want at least %.0f%% (%.0f%%)", 100*util, 100*worst, 100*tc.minUtil, 100*tc.minSec)
				}
				if inflight > 1.2 {
					t.Errorf("mean in flight %.2f BDP, want at most 1.2", inflight)
				}
				if q := l.meanQueue(); q > lk.rtt/10 {
					t.Errorf("mean queue %v, want at most a tenth of the RTT", q)
				}
			})
		}
	}
}

// TestPathChanges: the link's rate or delay changes at 10 s, and the
// controller follows within the stated round trips of the new path.
func TestPathChanges(t *testing.T) {
	skipUnderRace(t)
	for _, tc := range []struct {
		name           string
		rate1, rate2   float64 // Mbit/s
		delay1, delay2 time.Duration
		maxRounds      float64 // of the new path, to 90% of the new rate
	}{
		// Up: probes that find 15% more probe again at once.
		{"rate-up-20-100", 20, 100, 40 * time.Millisecond, 40 * time.Millisecond, 30},
		{"rate-down-100-20", 100, 20, 40 * time.Millisecond, 40 * time.Millisecond, 8},
		// A longer path (a new route) is seen when the RTT stays far up
		// for a few round trips and ProbeRTT confirms it; then Startup.
		{"rtt-up-20-160ms", 50, 50, 10 * time.Millisecond, 80 * time.Millisecond, 25},
		{"rtt-down-160-20ms", 50, 50, 80 * time.Millisecond, 10 * time.Millisecond, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &link{rate: mbit(tc.rate1), delay: tc.delay1}
			l.queue = l.bdp()
			s := newSim(t, 5, l)
			c := newBBR(5, 2*tc.delay1)
			f := s.addFlow(c, secs(0), 0)
			s.run(secs(10))
			l.rate, l.delay = mbit(tc.rate2), tc.delay2
			l.queue = max(l.queue, l.bdp())
			end := secs(20)
			s.run(end)
			at := f.reachedAt(secs(10), rtts(l, 4), 0.9*l.rate, end)
			rounds := float64(at.Sub(secs(10))) / float64(rtts(l, 1))
			after := f.rate(secs(15), secs(20)) / l.rate
			t.Logf("90%% of the new rate after %.1f round trips; %.1f%% from 15 to 20 s; min RTT %v; %d ProbeRTTs, %d restarts",
				rounds, 100*after, c.Stats().MinRTT, c.probeRTTs, c.restarts)
			if at == 0 || rounds > tc.maxRounds {
				t.Errorf("90%% of the new rate after %.1f round trips (0: never), want at most %v", rounds, tc.maxRounds)
			}
			if after < 0.93 {
				t.Errorf("%.1f%% of the new rate from 15 to 20 s, want at least 93%%", 100*after)
			}
			if got, want := c.Stats().MinRTT, 2*tc.delay2; got < want || got > want+want/10 {
				t.Errorf("min RTT %v, want about %v", got, want)
			}
		})
	}
}

// TestCongestionBacksOff: when the link's rate falls to a fifth under a
// shallow buffer, what was in flight no longer fits and the loss comes in
// bursts with the RTT up: congestion, not noise. The controller must
// drain the queue and stop the overflow within a few round trips.
func TestCongestionBacksOff(t *testing.T) {
	skipUnderRace(t)
	l := &link{rate: mbit(100), delay: 40 * time.Millisecond}
	l.queue = l.bdp() / 4
	s := newSim(t, 3, l)
	c := newBBR(3, 80*time.Millisecond)
	s.addFlow(c, secs(0), 0)
	s.run(secs(10))
	l.rate = mbit(20)
	s.run(secs(10).Add(rtts(l, 8)))
	drops := l.dropsQueue
	s.measureFrom = s.now
	s.run(secs(20))
	drops = l.dropsQueue - drops
	sent := int(mbit(20) * (secs(20).Sub(s.measureFrom)).Seconds() / simMSS)
	t.Logf("from 8 round trips after the drop: %d packets dropped at the queue (of about %d sent), mean queue %v, bandwidth estimate %.1f Mbit/s",
		drops, sent, l.meanQueue(), c.Stats().Bandwidth*8/1e6)
	if drops > sent/100 {
		t.Errorf("%d packets dropped at the full queue after the controller had 8 round trips to adapt, want at most 1%% of %d", drops, sent)
	}
	if q := l.meanQueue(); q > 10*time.Millisecond {
		t.Errorf("mean queue %v, want at most 10 ms", q)
	}
	if bw := c.Stats().Bandwidth; bw > 1.1*l.rate {
		t.Errorf("bandwidth estimate %.1f Mbit/s on a 20 Mbit/s link", bw*8/1e6)
	}
}

// TestDeepBuffer: a buffer eight times what the path holds does not fill:
// the controller keeps in flight about the path's capacity, alone or
// beside another of its kind.
func TestDeepBuffer(t *testing.T) {
	skipUnderRace(t)
	for _, flows := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d-flows", flows), func(t *testing.T) {
			l := &link{rate: mbit(50), delay: 40 * time.Millisecond}
			l.queue = 8 * l.bdp()
			s := newSim(t, 7, l)
			var fs []*flow
			for i := range flows {
				fs = append(fs, s.addFlow(newBBR(uint64(7+i), 80*time.Millisecond), secs(float64(i)), 0))
			}
			s.measureFrom = secs(5)
			s.run(secs(30))
			var total float64
			for _, f := range fs {
				total += f.rate(secs(5), secs(30))
			}
			t.Logf("goodput %.1f%%, mean queue %v, largest %v, drops %d", 100*total/l.rate, l.meanQueue(), l.queueMax, l.dropsQueue)
			// One flow paces at its estimate: almost no queue. Two each
			// overestimate their share a little, and the window (1.6
			// times the estimated capacity outside the probes, twice in
			// them) is what bounds the queue: on average under one
			// path's worth, and
			// never near the buffer's size. (That is what it costs to
			// hold a share against Linux TCP BBR, which keeps as much.)
			maxMean, maxQueue := 10*time.Millisecond, 80*time.Millisecond
			if flows > 1 {
				maxMean, maxQueue = 100*time.Millisecond, 400*time.Millisecond
			}
			if l.meanQueue() > maxMean || l.queueMax > maxQueue {
				t.Errorf("mean queue %v, largest %v; want at most %v, %v", l.meanQueue(), l.queueMax, maxMean, maxQueue)
			}
			if l.dropsQueue > 0 {
				t.Errorf("%d packets dropped at a queue of 8 BDP", l.dropsQueue)
			}
			if total < 0.95*l.rate {
				t.Errorf("goodput %.1f%% of the link, want at least 95%%", 100*total/l.rate)
			}
		})
	}
}

// TestSharing: two flows on one link, the second starting 2 s after the
// first, measured from 10 to 40 s and summed over two seeds. Against
// another of its kind and against a loss-blind BBR (the stand-in for
// Linux TCP BBR) each gets 35-65%; a Reno or a CUBIC flow keeps at least
// nine tenths of the share it keeps against the loss-blind one.
func TestSharing(t *testing.T) {
	skipUnderRace(t)
	ours := func(seed uint64) ccSender { return newBBR(seed, 80*time.Millisecond) }
	blind := func(seed uint64) ccSender {
		return New(Config{MSS: simMSS, Seed: seed, InitialRTT: 80 * time.Millisecond, LossBlind: true})
	}
	renoF := func(uint64) ccSender { return newReno() }
	share := func(t *testing.T, a, b func(uint64) ccSender, qBDP float64) (float64, float64) {
		var ra, rb float64
		for seed := uint64(1); seed <= 2; seed++ {
			l := &link{rate: mbit(50), delay: 40 * time.Millisecond}
			l.queue = int64(qBDP * float64(l.bdp()))
			s := newSim(t, seed, l)
			fa := s.addFlow(a(seed*7), secs(0), 0)
			fb := s.addFlow(b(seed*13), secs(2), 0)
			s.run(secs(40))
			ra += fa.rate(secs(10), secs(40))
			rb += fb.rate(secs(10), secs(40))
		}
		return ra / (ra + rb), (ra + rb) / (2 * mbit(50))
	}
	for _, tc := range []struct {
		name string
		b    func(uint64) ccSender
		qBDP float64
	}{
		{"ours-q1", ours, 1},
		{"ours-q0.5", ours, 0.5},
		{"blind-q0.5", blind, 0.5},
		{"blind-q1", blind, 1},
		{"blind-q2", blind, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sh, util := share(t, ours, tc.b, tc.qBDP)
			t.Logf("our share %.1f%%, link used %.1f%%", 100*sh, 100*util)
			if sh < 0.35 || sh > 0.65 {
				t.Errorf("our share %.1f%%, want 35-65%%", 100*sh)
			}
			if util < 0.9 {
				t.Errorf("the two flows used %.1f%% of the link, want at least 90%%", 100*util)
			}
		})
	}
	cubicF := func(uint64) ccSender { return newCubic() }
	for _, lb := range []struct {
		name string
		f    func(uint64) ccSender
	}{{"reno", renoF}, {"cubic", cubicF}} {
		for _, q := range []float64{1, 4} {
			t.Run(fmt.Sprintf("%s-q%v", lb.name, q), func(t *testing.T) {
				vsOurs, _ := share(t, ours, lb.f, q)
				vsBlind, _ := share(t, blind, lb.f, q)
				t.Logf("%s keeps %.1f%% against ours, %.1f%% against the loss-blind BBR", lb.name, 100*(1-vsOurs), 100*(1-vsBlind))
				if 1-vsOurs < 0.9*(1-vsBlind) {
					t.Errorf("%s keeps %.1f%% against ours, want at least nine tenths of the %.1f%% it keeps against the loss-blind BBR", lb.name, 100*(1-vsOurs), 100*(1-vsBlind))
				}
			})
		}
	}
}

// TestRateLimit: the pacing rate never passes the limit, and lifting the
// limit finds the path's rate again as fast as a start does.
func TestRateLimit(t *testing.T) {
	skipUnderRace(t)
	l := &link{rate: mbit(100), delay: 40 * time.Millisecond}
	l.queue = l.bdp()
	s := newSim(t, 9, l)
	c := New(Config{MSS: simMSS, Seed: 9, InitialRTT: 80 * time.Millisecond, RateLimit: mbit(10)})
	f := s.addFlow(c, secs(0), 0)
	s.measureFrom = secs(2)
	s.run(secs(15))
	got := f.rate(secs(2), secs(15))
	t.Logf("limit 10 Mbit/s: %.2f Mbit/s, mean queue %v", got*8/1e6, l.meanQueue())
	if got > 1.01*mbit(10) || got < 0.95*mbit(10) {
		t.Errorf("%.2f Mbit/s under a 10 Mbit/s limit, want 9.5-10.1", got*8/1e6)
	}
	c.SetRateLimit(mbit(30))
	s.run(secs(20))
	if got := f.rate(secs(17), secs(20)); got > 1.01*mbit(30) || got < 0.95*mbit(30) {
		t.Errorf("%.2f Mbit/s once the limit rose to 30 Mbit/s", got*8/1e6)
	}
	c.SetRateLimit(0)
	end := secs(30)
	s.run(end)
	at := f.reachedAt(secs(20), rtts(l, 1), 0.9*l.rate, end)
	rounds := float64(at.Sub(secs(20))) / float64(rtts(l, 1))
	t.Logf("limit lifted: 90%% of the link after %.1f round trips", rounds)
	if at == 0 || rounds > 10 {
		t.Errorf("90%% of the link %.1f round trips after the limit was lifted (0: never), want at most 10", rounds)
	}
}

func TestMaxBwFilter(t *testing.T) {
	var f maxBwFilter
	f.update(0, 100)
	f.update(1, 50)
	f.update(1, 70)
	for _, tc := range []struct {
		round int64
		want  float64
	}{
		{1, 100}, {bwRounds - 1, 100}, {bwRounds, 70}, {bwRounds + 1, 0},
	} {
		if got := f.get(tc.round); got != tc.want {
			t.Errorf("get(%d) = %v, want %v", tc.round, got, tc.want)
		}
	}
	f.update(bwRounds+1, 10) // overwrites round 1's slot
	if got := f.get(bwRounds + 1); got != 10 {
		t.Errorf("after a new round in an old slot: get = %v, want 10", got)
	}
}

func TestMinRTTFilter(t *testing.T) {
	var f minRTTFilter
	t0 := Instant(time.Second)
	f.update(t0, 50*time.Millisecond)
	f.update(t0.Add(time.Second), 60*time.Millisecond)
	if f.rtt != 50*time.Millisecond {
		t.Errorf("min = %v, want 50ms", f.rtt)
	}
	f.update(t0.Add(2*time.Second), 50*time.Millisecond) // equal refreshes
	if f.expired(t0.Add(minRTTWindow + time.Second)) {
		t.Error("expired though refreshed a second later")
	}
	if !f.expired(t0.Add(minRTTWindow + 3*time.Second)) {
		t.Error("not expired after the window")
	}
}

func TestPacer(t *testing.T) {
	t0 := Instant(time.Second)
	p := pacer{mss: 1200, rate: 12e6} // 10 packets per millisecond: a burst is 2 ms, 20 packets
	n := 0
	for p.hasBudget(t0) {
		p.onSent(t0, 1200)
		n++
	}
	if n != 20 {
		t.Errorf("%d packets at once, want a burst of 20", n)
	}
	next := p.next()
	if wait := next.Sub(t0); wait < 900*time.Microsecond || wait > 1100*time.Microsecond {
		t.Errorf("next send after %v, want about 1ms (a millisecond's worth of packets)", wait)
	}
	if !p.hasBudget(next) {
		t.Error("no budget at the time next gave")
	}
	// Over a long run the pacer lets the rate through and no more.
	sent := 0.0
	now := next
	for now < t0.Add(time.Second) {
		for p.hasBudget(now) {
			p.onSent(now, 1200)
			sent += 1200
		}
		now = max(p.next(), now+1)
	}
	if r := sent / now.Sub(t0).Seconds(); r > 12e6*1.01 || r < 12e6*0.98 {
		t.Errorf("paced %.0f B/s, want 12e6", r)
	}
}

func TestSampler(t *testing.T) {
	t0 := Instant(time.Second)
	ms := func(n float64) Instant { return t0.Add(time.Duration(n * float64(time.Millisecond))) }
	var s sampler
	// A packet of 1000 bytes a millisecond, each acknowledged 50 ms
	// after it was sent: 1 MB/s, RTT 50 ms. The first round trip's
	// samples span the whole round trip (nothing was delivered before),
	// so they are low; from the second on they show the rate.
	var first, last sample
	for i := range 150 {
		if i >= 50 {
			last = s.onAck(ms(float64(i)), []int64{int64(i - 50)}, nil)
			if i == 50 {
				first = last
			}
		}
		if i < 120 {
			s.onSent(ms(float64(i)), int64(i), 1000, false)
		}
	}
	if last.rtt != 50*time.Millisecond {
		t.Errorf("rtt %v, want 50ms", last.rtt)
	}
	if first.rate > 0.1e6 {
		t.Errorf("first sample's rate %.0f B/s, want one packet over the round trip", first.rate)
	}
	if last.rate < 0.99e6 || last.rate > 1.01e6 {
		t.Errorf("rate %.0f B/s, want 1e6", last.rate)
	}
	if last.interval != 50*time.Millisecond {
		t.Errorf("interval %v, want 50ms", last.interval)
	}
	// Packets 100-119 are in flight.
	if s.inflight != 20000 {
		t.Fatalf("in flight %d, want 20000", s.inflight)
	}
	// Lost packets leave flight and are counted; unknown and repeated
	// numbers are ignored.
	sm := s.onAck(ms(170), []int64{102, 102, 999}, []int64{100, 101, 100})
	if sm.lost != 2000 || sm.lostPkts != 2 || sm.delivered != 1000 {
		t.Errorf("lost %d bytes in %d packets, delivered %d; want 2000, 2, 1000", sm.lost, sm.lostPkts, sm.delivered)
	}
	if sm.inflightAtLoss != 50000 {
		t.Errorf("in flight at loss %d, want 50000 (packet 100 was sent with 50 in flight)", sm.inflightAtLoss)
	}
	if s.inflight != 17000 {
		t.Errorf("in flight %d, want 17000", s.inflight)
	}
	// Packets the stack forgot leave flight too: 103 to 109.
	s.dropBefore(ms(110))
	if s.inflight != 10000 {
		t.Errorf("in flight %d after forgetting packets sent before 110 ms, want 10000", s.inflight)
	}
	// A sender with nothing to send marks its samples app-limited until
	// what it sent then is delivered.
	var a sampler
	a.onSent(ms(0), 0, 1000, true)
	a.onSent(ms(1), 1, 1000, false)
	if sm := a.onAck(ms(50), []int64{0}, nil); !sm.appLimited {
		t.Error("sample of an app-limited packet not marked")
	}
	a.onAck(ms(51), []int64{1}, nil)
	a.onSent(ms(51), 2, 1000, false)
	if sm := a.onAck(ms(101), []int64{2}, nil); sm.appLimited {
		t.Error("sample still app-limited after the app-limited data was delivered")
	}
}

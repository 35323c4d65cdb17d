package bbr

import "time"

// maxBwFilter is the largest delivery rate seen over the last bwRounds
// round trips: one slot per round, the oldest overwritten.
type maxBwFilter struct {
	slots [bwRounds]struct {
		round int64
		rate  float64
	}
}

// bwRounds is how many round trips the bandwidth estimate remembers: long
// enough to span a ProbeBW gain cycle (8 phases), so that the rate reached
// while probing up is kept until the next probe.
const bwRounds = 10

func (f *maxBwFilter) update(round int64, rate float64) {
	s := &f.slots[round%bwRounds]
	if s.round != round {
		s.round, s.rate = round, 0
	}
	s.rate = max(s.rate, rate)
}

// get is the estimate at round.
func (f *maxBwFilter) get(round int64) float64 {
	var best float64
	for _, s := range f.slots {
		if s.round > round-bwRounds && s.round <= round {
			best = max(best, s.rate)
		}
	}
	return best
}

// reset forgets everything but rate, taken as seen in round.
func (f *maxBwFilter) reset(round int64, rate float64) {
	*f = maxBwFilter{}
	f.update(round, rate)
}

// minRTTFilter is the smallest round-trip time seen, and when; it expires
// after minRTTWindow, when ProbeRTT measures it again.
type minRTTFilter struct {
	rtt   time.Duration // 0: none yet
	stamp Instant
}

// minRTTWindow is how long a minimum round-trip time is trusted: a path
// can get longer (a route change), and only a fresh measurement shows it.
const minRTTWindow = 10 * time.Second

func (f *minRTTFilter) update(now Instant, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	if f.rtt == 0 || rtt <= f.rtt {
		f.rtt, f.stamp = rtt, now
	}
}

func (f *minRTTFilter) expired(now Instant) bool {
	return f.rtt != 0 && now.Sub(f.stamp) > minRTTWindow
}

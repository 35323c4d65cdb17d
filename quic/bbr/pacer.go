package bbr

import "time"

// pacer spreads packets out at a rate: a token bucket that fills at the
// pacing rate and holds at most a short burst.
type pacer struct {
	rate   float64 // bytes per second
	budget float64 // bytes that may go now, as of last
	last   Instant
	mss    int64
}

const (
	// A burst is what the rate carries in burstTime, and at least
	// burstPackets packets: timers fire about a millisecond late, and a
	// sender woken that late may catch up at once.
	burstTime    = 2 * time.Millisecond
	burstPackets = 10
	// wakeTime: a sender held back waits until this much is due, so that
	// it wakes once per batch of packets rather than once per packet.
	wakeTime = time.Millisecond
)

func (p *pacer) maxBurst() float64 {
	return max(p.rate*burstTime.Seconds(), float64(burstPackets*p.mss))
}

func (p *pacer) refill(now Instant) {
	if p.last == 0 {
		p.budget, p.last = p.maxBurst(), now
		return
	}
	if now > p.last {
		p.budget = min(p.maxBurst(), p.budget+p.rate*now.Sub(p.last).Seconds())
		p.last = now
	}
}

func (p *pacer) setRate(now Instant, rate float64) {
	p.refill(now)
	p.rate = rate
}

func (p *pacer) hasBudget(now Instant) bool {
	p.refill(now)
	return p.budget >= float64(p.mss)
}

func (p *pacer) onSent(now Instant, bytes int64) {
	p.refill(now)
	p.budget = max(p.budget-float64(bytes), -float64(p.mss))
}

// next is when a held-back sender should try again: when wakeTime of
// sending (at least a packet, at most a burst) is due.
func (p *pacer) next() Instant {
	if p.budget >= float64(p.mss) || p.rate <= 0 {
		return p.last
	}
	want := min(p.maxBurst(), max(float64(p.mss), p.rate*wakeTime.Seconds()))
	wait := time.Duration((want - p.budget) / p.rate * float64(time.Second))
	return p.last.Add(wait + 1)
}

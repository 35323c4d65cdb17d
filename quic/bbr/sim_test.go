package bbr

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// This file is a packet-level simulation of senders sharing one
// bottleneck, on a virtual clock, for the controller's tests: every run
// with the same seed is the same run.
//
// The bottleneck is modelled like netlab (../shared/netlab), which the
// benchmarks use: random loss as a packet enters, then a drop-tail queue
// in front of a link of a fixed rate, then the propagation delay. ACKs
// come back after the same delay, unlimited and never lost. Receivers
// acknowledge every second packet, or 1 ms after an odd one; senders
// detect loss like QUIC (RFC 9002: three packets or 9/8 of an RTT behind
// the largest acknowledged, and a probe timeout).

const simMSS = 1200

type event struct {
	at  Instant
	seq int64
	fn  func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	return q[i].at < q[j].at || (q[i].at == q[j].at && q[i].seq < q[j].seq)
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// link is the bottleneck and the paths to and from it.
type link struct {
	rate  float64       // bytes per second
	delay time.Duration // one way, each direction
	queue int64         // drop-tail limit, bytes
	loss  float64       // random loss on entry
	txEnd Instant       // when everything accepted so far has left

	// What crossed it, for the tests.
	dropsQueue, dropsRandom int
	queueSum                float64 // sum over packets of the queueing delay they met, seconds
	queuePkts               int
	queueMax                time.Duration
}

// sim is one simulation: a link, its flows, and the clock.
type sim struct {
	t     *testing.T
	now   Instant
	seq   int64
	q     eventQueue
	link  *link
	rng   *rand.Rand
	flows []*flow
	// measureFrom: queue statistics count packets from then on.
	measureFrom Instant
}

func newSim(t *testing.T, seed uint64, l *link) *sim {
	return &sim{t: t, link: l, rng: rand.New(rand.NewPCG(seed, 1)), now: Instant(time.Second)}
}

func (s *sim) at(when Instant, fn func()) {
	s.seq++
	heap.Push(&s.q, &event{at: when, seq: s.seq, fn: fn})
}

// run advances the clock to end, running every event due by then.
func (s *sim) run(end Instant) {
	for len(s.q) > 0 && s.q[0].at <= end {
		e := heap.Pop(&s.q).(*event)
		s.now = e.at
		e.fn()
	}
	s.now = end
}

// bdp is the link's bandwidth-delay product in bytes.
func (l *link) bdp() int64 { return int64(l.rate * (2 * l.delay).Seconds()) }

// enter offers a packet to the link at now; deliver runs when it arrives
// at the receiver, unless it is dropped.
func (s *sim) enter(size int64, deliver func()) {
	l := s.link
	if s.rng.Float64() < l.loss {
		l.dropsRandom++
		return
	}
	backlog := float64(0)
	if l.txEnd > s.now {
		backlog = l.txEnd.Sub(s.now).Seconds() * l.rate
	}
	if backlog+float64(size) > float64(l.queue) {
		l.dropsQueue++
		return
	}
	wait := time.Duration(backlog / l.rate * float64(time.Second))
	if s.now >= s.measureFrom {
		l.queueSum += wait.Seconds()
		l.queuePkts++
		l.queueMax = max(l.queueMax, wait)
	}
	start := max(l.txEnd, s.now)
	l.txEnd = start.Add(time.Duration(float64(size) / l.rate * float64(time.Second)))
	s.at(l.txEnd.Add(l.delay), deliver)
}

// meanQueue is the mean queueing delay packets met since measureFrom.
func (l *link) meanQueue() time.Duration {
	if l.queuePkts == 0 {
		return 0
	}
	return time.Duration(l.queueSum / float64(l.queuePkts) * float64(time.Second))
}

// ccSender is what a flow needs of its congestion controller.
type ccSender interface {
	OnSent(now Instant, pn, bytes, inflight int64)
	OnAck(now Instant, acked, lost []int64)
	CanSend(inflight int64) bool
	HasBudget(now Instant) bool
	NextSend() Instant
}

type sentPkt struct {
	pn    int64
	sent  Instant
	acked bool
	lost  bool
}

// flow is a bulk sender with unlimited data, and its receiver.
type flow struct {
	s        *sim
	cc       ccSender
	pn       int64
	inflight int64
	out      []sentPkt // outstanding, in order
	largest  int64     // largest acknowledged
	srtt     time.Duration
	latest   time.Duration
	wake     Instant // a pacing wake-up is scheduled for then (0: none)
	lastAck  Instant
	stopAt   Instant

	// Receiver.
	unacked []int64
	ackTmr  bool

	// Measurements.
	delivered     int64
	deliveredAt   []Instant // time of each acknowledgement ...
	deliveredUpTo []int64   // ... and the count after it
	inflightSum   float64
	inflightN     int
}

func (s *sim) addFlow(cc ccSender, start, stop Instant) *flow {
	f := &flow{s: s, cc: cc, largest: -1, stopAt: stop}
	s.flows = append(s.flows, f)
	s.at(start, f.trySend)
	return f
}

func (f *flow) trySend() {
	s := f.s
	if f.stopAt != 0 && s.now >= f.stopAt {
		return
	}
	for f.cc.CanSend(f.inflight) {
		if !f.cc.HasBudget(s.now) {
			next := max(f.cc.NextSend(), s.now+1)
			if f.wake == 0 || next < f.wake {
				f.wake = next
				s.at(next, func() {
					if f.wake == next {
						f.wake = 0
						f.trySend()
					}
				})
			}
			return
		}
		f.send()
	}
}

func (f *flow) send() {
	s := f.s
	pn := f.pn
	f.pn++
	f.inflight += simMSS
	f.out = append(f.out, sentPkt{pn: pn, sent: s.now})
	f.cc.OnSent(s.now, pn, simMSS, f.inflight)
	if s.now >= s.measureFrom {
		f.inflightSum += float64(f.inflight)
		f.inflightN++
	}
	s.enter(simMSS, func() { f.receive(pn) })
	f.armPTO()
}

// receive is the receiver's side: acknowledge every second packet, or
// the odd one a millisecond later.
func (f *flow) receive(pn int64) {
	s := f.s
	f.unacked = append(f.unacked, pn)
	if len(f.unacked) >= 2 {
		f.sendAck()
		return
	}
	if !f.ackTmr {
		f.ackTmr = true
		s.at(s.now.Add(time.Millisecond), func() {
			f.ackTmr = false
			if len(f.unacked) > 0 {
				f.sendAck()
			}
		})
	}
}

func (f *flow) sendAck() {
	pns := f.unacked
	f.unacked = nil
	f.s.at(f.s.now.Add(f.s.link.delay), func() { f.onAck(pns) })
}

// onAck is the sender's side of an acknowledgement.
func (f *flow) onAck(pns []int64) {
	s := f.s
	f.lastAck = s.now
	var acked, lost []int64
	for _, pn := range pns {
		i := f.index(pn)
		if i < 0 || f.out[i].acked || f.out[i].lost {
			continue
		}
		f.out[i].acked = true
		acked = append(acked, pn)
		f.inflight -= simMSS
		f.delivered += simMSS
		if pn > f.largest {
			f.largest = pn
			f.latest = s.now.Sub(f.out[i].sent)
			if f.srtt == 0 {
				f.srtt = f.latest
			} else {
				f.srtt = (7*f.srtt + f.latest) / 8
			}
		}
	}
	lost = f.detectLoss()
	f.trim()
	if len(acked) > 0 {
		f.deliveredAt = append(f.deliveredAt, s.now)
		f.deliveredUpTo = append(f.deliveredUpTo, f.delivered)
	}
	if len(acked) > 0 || len(lost) > 0 {
		f.cc.OnAck(s.now, acked, lost)
	}
	f.trySend()
}

func (f *flow) index(pn int64) int {
	i := sort.Search(len(f.out), func(i int) bool { return f.out[i].pn >= pn })
	if i < len(f.out) && f.out[i].pn == pn {
		return i
	}
	return -1
}

// detectLoss declares lost what is three packets or 9/8 of an RTT behind
// the largest acknowledged.
func (f *flow) detectLoss() []int64 {
	var lost []int64
	thresh := time.Duration(float64(max(f.srtt, f.latest)) * 9 / 8)
	for i := range f.out {
		p := &f.out[i]
		if p.pn >= f.largest {
			break
		}
		if p.acked || p.lost {
			continue
		}
		if f.largest-p.pn >= 3 || f.s.now.Sub(p.sent) > thresh {
			p.lost = true
			f.inflight -= simMSS
			lost = append(lost, p.pn)
		}
	}
	return lost
}

func (f *flow) trim() {
	i := 0
	for i < len(f.out) && (f.out[i].acked || f.out[i].lost) {
		i++
	}
	f.out = f.out[i:]
}

// armPTO declares everything outstanding lost when nothing has been
// acknowledged for a while (a tail loss, or the whole window lost).
func (f *flow) armPTO() {
	s := f.s
	pto := max(3*f.srtt, 50*time.Millisecond)
	if f.srtt == 0 {
		pto = time.Second // RFC 9002's initial RTT is 333 ms
	}
	sentAt := s.now
	s.at(s.now.Add(pto), func() {
		if f.lastAck >= sentAt || f.inflight == 0 {
			return
		}
		var lost []int64
		for i := range f.out {
			p := &f.out[i]
			if !p.acked && !p.lost && p.sent <= sentAt {
				p.lost = true
				f.inflight -= simMSS
				lost = append(lost, p.pn)
			}
		}
		f.trim()
		if len(lost) > 0 {
			f.cc.OnAck(s.now, nil, lost)
			f.trySend()
		}
	})
}

// rate is the flow's goodput between from and to, bytes per second.
func (f *flow) rate(from, to Instant) float64 {
	return float64(f.deliveredBy(to)-f.deliveredBy(from)) / to.Sub(from).Seconds()
}

func (f *flow) deliveredBy(t Instant) int64 {
	i := sort.Search(len(f.deliveredAt), func(i int) bool { return f.deliveredAt[i] > t })
	if i == 0 {
		return 0
	}
	return f.deliveredUpTo[i-1]
}

// reachedAt is when the flow's goodput, over windows of w, first reached
// rate; 0 if it never did.
func (f *flow) reachedAt(start Instant, w time.Duration, rate float64, end Instant) Instant {
	for t := start.Add(w); t <= end; t = t.Add(w / 4) {
		if f.rate(t.Add(-w), t) >= rate {
			return t
		}
	}
	return 0
}

func (f *flow) meanInflight() int64 {
	if f.inflightN == 0 {
		return 0
	}
	return int64(f.inflightSum / float64(f.inflightN))
}

// reno is a loss-based sender for the competing-flow tests: NewReno-like
// slow start and AIMD, halving at most once per round trip, unpaced.
type reno struct {
	cwnd, ssthresh int64
	recoveryEnd    int64 // losses of packets below this are the same event
	nextPN         int64
	ackedBytes     int64
}

func newReno() *reno { return &reno{cwnd: 32 * simMSS, ssthresh: 1 << 40} }

func (r *reno) OnSent(_ Instant, pn, _, _ int64) { r.nextPN = pn + 1 }
func (r *reno) OnAck(_ Instant, acked, lost []int64) {
	for _, pn := range lost {
		if pn >= r.recoveryEnd {
			r.cwnd = max(r.cwnd/2, 2*simMSS)
			r.ssthresh = r.cwnd
			r.recoveryEnd = r.nextPN
		}
	}
	for range acked {
		if r.cwnd < r.ssthresh {
			r.cwnd += simMSS
		} else {
			r.ackedBytes += simMSS
			if r.ackedBytes >= r.cwnd {
				r.ackedBytes -= r.cwnd
				r.cwnd += simMSS
			}
		}
	}
}
func (r *reno) CanSend(inflight int64) bool { return inflight < r.cwnd }
func (r *reno) HasBudget(Instant) bool      { return true }
func (r *reno) NextSend() Instant           { return 0 }

func mbit(n float64) float64 { return n * 1e6 / 8 }

func secs(n float64) Instant { return Instant(time.Second) + Instant(n*float64(time.Second)) }

func newBBR(seed uint64, rtt time.Duration) *Controller {
	return New(Config{MSS: simMSS, Seed: seed, InitialRTT: rtt})
}

// cubic is a loss-based sender for the competing-flow tests, like Linux's
// default: the window grows along RFC 8312's cubic curve toward, then past,
// where the last loss was, and falls to 0.7 of it at a loss (once per
// round trip); unpaced.
type cubic struct {
	cwnd, ssthresh float64 // packets
	wmax           float64
	epoch          Instant
	k              float64
	recoveryEnd    int64
	nextPN         int64
}

func newCubic() *cubic { return &cubic{cwnd: 32, ssthresh: 1e9} }

func (c *cubic) OnSent(_ Instant, pn, _, _ int64) { c.nextPN = pn + 1 }
func (c *cubic) OnAck(now Instant, acked, lost []int64) {
	for _, pn := range lost {
		if pn >= c.recoveryEnd {
			c.wmax = c.cwnd
			c.cwnd = math.Max(c.cwnd*0.7, 2)
			c.ssthresh = c.cwnd
			c.recoveryEnd = c.nextPN
			c.epoch = 0
		}
	}
	for range acked {
		if c.cwnd < c.ssthresh {
			c.cwnd++
			continue
		}
		if c.epoch == 0 {
			c.epoch = now
			c.k = math.Cbrt(c.wmax * 0.3 / 0.4)
		}
		t := now.Sub(c.epoch).Seconds() + 0.08
		target := 0.4*math.Pow(t-c.k, 3) + c.wmax
		if target > c.cwnd {
			c.cwnd += (target - c.cwnd) / c.cwnd
		} else {
			c.cwnd += 0.01 / c.cwnd
		}
	}
}
func (c *cubic) CanSend(inflight int64) bool { return float64(inflight) < c.cwnd*simMSS }
func (c *cubic) HasBudget(Instant) bool      { return true }
func (c *cubic) NextSend() Instant           { return 0 }

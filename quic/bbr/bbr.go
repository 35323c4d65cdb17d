// Package bbr is a congestion controller of the BBR family, written for
// qbackup from the published design: the BBR paper (Cardwell et al., ACM
// Queue 14(5), 2016), draft-ietf-ccwg-bbr and its delivery rate
// estimation, and the Linux design notes. It is not a port of any
// implementation.
//
// Like BBR it models the path by two numbers, the bottleneck bandwidth
// (the largest delivery rate seen over the last bwRounds round trips) and
// the round-trip propagation time (the smallest RTT seen over
// minRTTWindow), paces packets at the bandwidth times a gain, and keeps
// in flight about their product. It starts up by doubling its rate each
// round trip until the bandwidth stops growing (Startup), drains the
// queue that made (Drain), then cruises at the estimate, probing up for
// more once every eight round trips and draining after (ProbeBW), and
// every ten seconds briefly halves what it keeps in flight to measure the
// propagation time afresh (ProbeRTT).
//
// Random loss alone does not slow it, as it does not slow Linux TCP BBR:
// a backup over a lossy radio link loses a packet in fifty whether or not
// anyone else is sending. It does back off when the bottleneck queue
// really fills. It learns the loss rate the path shows when no queue
// stands (rounds whose RTT stays near the minimum), and a round that
// loses clearly more than that while the RTT is up, or very much more at
// any RTT, counts as congestion: it ends Startup or a probe at once, caps
// what it keeps in flight below where the loss began, and lowers its
// rate estimate, until its next probe finds room again.
package bbr

import (
	"math"
	"math/rand/v2"
	"time"
)

// Config sets up a Controller.
type Config struct {
	// MSS is the largest datagram the connection sends, in bytes.
	MSS int64
	// InitialWindow is the congestion window before any acknowledgement,
	// in bytes; 0 means 32 packets.
	InitialWindow int64
	// InitialRTT is a round-trip time to pace the first window by (the
	// handshake's); 0 means 100 ms.
	InitialRTT time.Duration
	// RateLimit caps the pacing rate, bytes per second; 0: no cap.
	RateLimit float64
	// Seed chooses the phase ProbeBW starts in; flows sharing a link
	// start in different phases, so that they do not probe together.
	Seed uint64
	// LossBlind makes the controller ignore loss, like Linux TCP BBR v1.
	// Tests use it as a stand-in for a competing TCP BBR flow.
	LossBlind bool
}

// State is the phase of the controller.
type State int

// The states of a Controller.
const (
	Startup State = iota
	Drain
	ProbeBW
	ProbeRTT
)

func (s State) String() string {
	switch s {
	case Startup:
		return "startup"
	case Drain:
		return "drain"
	case ProbeBW:
		return "probe-bw"
	case ProbeRTT:
		return "probe-rtt"
	}
	return "unknown"
}

const (
	// startupGain doubles the delivery rate each round trip: 2/ln 2.
	startupGain = 2.885
	// startupCwndGain: in Startup the window must not hold the rate back.
	startupCwndGain = 2.0
	// cwndGain bounds what is in flight to twice the path's capacity in
	// ProbeBW; pacing keeps it near one, and the rest absorbs bunched
	// acknowledgements.
	cwndGain = 2.0
	// cruiseCwndGain bounds what is in flight outside the probes. Pacing
	// keeps it near one BDP alone; beside a loss-based flow that fills the
	// bottleneck's queue, the window is what holds, and at 2 it kept the
	// queue so full that TCP cubic kept 2% of a 100 Mbit/s, 80 ms link
	// (netlab, queue 1 BDP), at 1.25 it left cubic half but took only 13%
	// beside TCP bbr; at 1.6, 12% and 44% (docs/benchmarks.md).
	cruiseCwndGain = 1.6
	// fullBwGrowth and fullBwRounds: Startup ends when the bandwidth has
	// not grown by a quarter in three round trips.
	fullBwGrowth = 1.25
	fullBwRounds = 3
	// probeFound: a probe that raised the estimate by this much found
	// room, and the next starts at once.
	probeFound = 1.15
	// pacingMargin keeps the cruising rate just under the estimate, so
	// that a queue it left drains.
	pacingMargin = 0.01
	// probeRTTTime is how long ProbeRTT holds the window down.
	probeRTTTime = 200 * time.Millisecond
	// minWindowPackets is the smallest congestion window.
	minWindowPackets = 4
	// Loss: a round counts as congestion when it lost at least
	// minLossPackets and more than lossBase + lossOverBg x the background
	// loss rate, while the RTT was up; or more than lossSevere and
	// lossSevereOverBg x that threshold at any RTT.
	minLossPackets   = 5
	lossBase         = 0.02
	lossOverBg       = 1.5
	lossSevere       = 0.15
	lossSevereOverBg = 3
	// rttHighProbe: after this many round trips in which no RTT came
	// within half the minimum of it, the controller measures the minimum
	// again at once (ProbeRTT) rather than when it expires.
	rttHighProbe = 3
	// probeRTTAging is how many round trips of a ProbeRTT age the
	// bandwidth filter: about as many as 200 ms holds on a long path.
	probeRTTAging = 3
	// rttHighMin: an RTT counts as far above the minimum (the path may
	// have got longer) when it exceeds it by half and by this much; less
	// is the jitter of a radio link or a busy host, and a path that got
	// only that much longer costs little while the old minimum stands.
	rttHighMin = 10 * time.Millisecond
	// earlyProbeGap is the shortest time between early ProbeRTTs.
	earlyProbeGap = time.Second
	// The RTT is "up" when it exceeds the minimum by an eighth (a queue
	// of an eighth of what is in flight) and 2 ms (scheduling noise).
	rttUpFraction = 8
	rttUpMin      = 2 * time.Millisecond
	// On congestion in Startup or a probe, the window is capped at
	// inflightHeadroom of what was in flight when the loss began (but
	// not below the path's capacity), and the rate estimate falls to the
	// rate just delivered, but by no more than lossBeta at a time.
	inflightHeadroom = 0.85
	lossBeta         = 0.7
)

// probeGains is the ProbeBW cycle, one phase per minimum RTT: probe up,
// drain what that queued, then cruise.
var probeGains = [8]float64{1.25, 0.75, 1, 1, 1, 1, 1, 1}

// Controller decides how much a connection may have in flight (its
// congestion window) and how fast it sends (its pacing rate). It is not
// safe for concurrent use: the QUIC stack calls it from the connection's
// own goroutine.
type Controller struct {
	cfg     Config
	mss     int64
	s       sampler
	p       pacer
	rng     *rand.Rand
	state   State
	cwnd    int64
	lastPkt Instant // when the last packet was sent
	lastAck Instant // when the last acknowledgement came

	// The model.
	bw     maxBwFilter
	minRTT minRTTFilter
	bwLo   float64 // rate estimate after congestion; +Inf: none
	infHi  int64   // window cap after congestion; 0: none

	// Round trips. The bandwidth filter ages by bwRound, which counts at
	// most probeRTTAging of the round trips of a ProbeRTT: on a short
	// path ProbeRTT lasts many round trips at half the window, and the
	// estimate must outlive it.
	round            int64
	bwRound          int64
	probeRTTAged     int
	nextRound        int64 // delivered count that ends the current round
	roundLost        int64
	roundDelivered   int64
	roundLostPkts    int
	roundMaxRTT      time.Duration
	roundMinRTT      time.Duration
	rttHighRounds    int // consecutive rounds whose every RTT was far above the minimum
	roundMaxRate     float64
	lastRoundMaxRate float64
	roundCongested   bool
	bgLoss           float64 // loss rate of calm rounds
	bgRounds         int

	// Startup.
	filledPipe  bool
	fullBw      float64
	fullBwCount int

	// ProbeBW.
	phase      int
	phaseStart Instant
	phaseLoss  bool    // congestion seen in this phase
	probeBw    float64 // in phase 0: the bandwidth as the last round began

	// ProbeRTT.
	probeRTTDone  Instant // 0: the window has not come down yet
	probeRTTRound int64
	probeRTTMin   time.Duration
	priorCwnd     int64
	lastProbeRTT  Instant
	earlyGap      time.Duration // the wait before another early ProbeRTT

	probeRTTs, restarts int // for tests
}

// New returns a Controller in Startup.
func New(cfg Config) *Controller {
	if cfg.MSS <= 0 {
		cfg.MSS = 1200
	}
	if cfg.InitialWindow <= 0 {
		cfg.InitialWindow = 32 * cfg.MSS
	}
	if cfg.InitialRTT <= 0 {
		cfg.InitialRTT = 100 * time.Millisecond
	}
	c := &Controller{
		cfg:  cfg,
		mss:  cfg.MSS,
		rng:  rand.New(rand.NewPCG(cfg.Seed, 0x62627221)),
		cwnd: cfg.InitialWindow,
		bwLo: math.Inf(1),
	}
	c.p.mss = c.mss
	c.enterStartup()
	c.p.rate = c.capRate(startupGain * float64(cfg.InitialWindow) / cfg.InitialRTT.Seconds())
	return c
}

// SetMSS changes the largest datagram size (path MTU discovery).
func (c *Controller) SetMSS(n int64) {
	if n <= 0 {
		return
	}
	c.mss, c.p.mss = n, n
	c.cwnd = max(c.cwnd, c.minWindow())
}

// SetRateLimit caps the pacing rate at r bytes per second; 0 removes the cap.
func (c *Controller) SetRateLimit(r float64) {
	old := c.cfg.RateLimit
	c.cfg.RateLimit = max(r, 0)
	raised := old > 0 && (r <= 0 || r > old)
	if raised && c.filledPipe && c.bw.get(c.bwRound) >= 0.9*old {
		// The limit held the rate, so the bandwidth estimate is the
		// limit's, not the path's: find the path's again, as at the
		// start, rather than one probe of a quarter at a time.
		c.filledPipe, c.fullBw, c.fullBwCount = false, c.bw.get(c.bwRound), 0
		c.bwLo, c.infHi = math.Inf(1), 0
		c.enterStartup()
	}
}

// OnSent records a packet sent at now; inflight is the bytes in flight
// with it. Only packets that count in flight (that elicit an
// acknowledgement) are given.
func (c *Controller) OnSent(now Instant, pn, bytes, inflight int64) {
	// A sender that let its pacing budget and window go unused had
	// nothing to send: rates measured over that time are of the
	// application, not of the path.
	before := inflight - bytes
	gap := now.Sub(c.lastPkt)
	idle := c.lastPkt != 0 && before < c.cwnd &&
		gap > max(10*c.packetTime(), 5*time.Millisecond)
	c.s.onSent(now, pn, bytes, before == 0 || idle)
	c.p.onSent(now, bytes)
	c.lastPkt = now
}

// packetTime is how long one packet takes at the pacing rate.
func (c *Controller) packetTime() time.Duration {
	if c.p.rate <= 0 {
		return 0
	}
	return time.Duration(float64(c.mss) / c.p.rate * float64(time.Second))
}

// OnAck takes one acknowledgement received at now: the packet numbers it
// acknowledged, and those declared lost along with it (either may be
// empty). Numbers already handled are ignored.
func (c *Controller) OnAck(now Instant, acked, lost []int64) {
	c.lastAck = now
	sm := c.s.onAck(now, acked, lost)
	if sm.rtt > 0 {
		c.minRTT.update(now, sm.rtt)
		c.roundMaxRTT = max(c.roundMaxRTT, sm.rtt)
		c.roundMinRTT = minPositive(c.roundMinRTT, sm.rtt)
		if c.state == ProbeRTT {
			c.probeRTTMin = minPositive(c.probeRTTMin, sm.rtt)
		}
	}
	if sm.delivered > 0 && sm.priorDelivered >= c.nextRound {
		c.endRound()
		c.round++
		if c.state != ProbeRTT || c.probeRTTAged < probeRTTAging {
			c.bwRound++
			if c.state == ProbeRTT {
				c.probeRTTAged++
			}
		}
		c.nextRound = c.s.delivered
	}
	c.roundDelivered += sm.delivered
	c.roundLost += sm.lost
	c.roundLostPkts += sm.lostPkts
	if sm.rate > 0 && sm.interval >= c.minRTT.rtt/2 {
		if (!sm.appLimited && c.state != ProbeRTT) || sm.rate >= c.bw.get(c.bwRound) {
			c.bw.update(c.bwRound, c.capBw(sm.rate))
		}
		c.roundMaxRate = max(c.roundMaxRate, sm.rate)
	}
	if sm.lost > 0 && !c.cfg.LossBlind && !c.roundCongested && c.congested() {
		c.roundCongested = true
		c.onCongestion(now, sm.inflightAtLoss)
	}
	c.updateState(now, sm)
	c.updateWindow(sm.delivered)
	c.p.setRate(now, c.pacingRate())
}

// capBw keeps rate samples within what the rate limit lets through, so
// that Startup sees the bandwidth stop growing.
func (c *Controller) capBw(rate float64) float64 {
	if c.cfg.RateLimit > 0 {
		return min(rate, c.cfg.RateLimit)
	}
	return rate
}

// endRound closes the books on the round trip that just ended.
func (c *Controller) endRound() {
	total := c.roundLost + c.roundDelivered
	if total > 0 && !c.roundCongested && !c.rttUp() && total >= 20*c.mss {
		rate := float64(c.roundLost) / float64(total)
		c.bgRounds++
		w := max(1/8.0, 1/float64(c.bgRounds))
		c.bgLoss += w * (rate - c.bgLoss)
	}
	if c.state == Startup && !c.filledPipe {
		c.checkFullPipe()
	}

	c.roundLost, c.roundDelivered, c.roundLostPkts = 0, 0, 0
	if m := c.minRTT.rtt; m > 0 && c.roundMinRTT > m+max(m/2, rttHighMin) {
		c.rttHighRounds++
	} else {
		c.rttHighRounds = 0
	}
	c.roundMaxRTT, c.roundMinRTT, c.roundCongested = 0, 0, false
	c.lastRoundMaxRate, c.roundMaxRate = c.roundMaxRate, 0
}

// rttUp reports whether the round's RTT says a queue stood.
func (c *Controller) rttUp() bool {
	m := c.minRTT.rtt
	return m > 0 && c.roundMaxRTT > m+max(m/rttUpFraction, rttUpMin)
}

// congested reports whether the loss of the round so far is congestion.
func (c *Controller) congested() bool {
	if c.roundLostPkts < minLossPackets {
		return false
	}
	rate := float64(c.roundLost) / float64(c.roundLost+c.roundDelivered)
	thresh := lossBase + lossOverBg*c.bgLoss
	return (rate > thresh && c.rttUp()) || rate > max(lossSevere, lossSevereOverBg*thresh)
}

func (c *Controller) severeLoss() bool {
	rate := float64(c.roundLost) / float64(c.roundLost+c.roundDelivered)
	thresh := lossBase + lossOverBg*c.bgLoss
	return rate > max(lossSevere, lossSevereOverBg*thresh)
}

// onCongestion backs off: the round's loss is more than the path's own.
func (c *Controller) onCongestion(now Instant, inflightAtLoss int64) {
	if c.state == ProbeBW && c.phase != 0 && !c.severeLoss() {
		// Cruising, the controller paces just under its estimate and
		// adds no queue of its own: the loss is another flow's, whose
		// queue fills the buffer. Backing off further would hand that
		// flow the link (Linux TCP BBR v1 ignores loss altogether), so
		// only the next probe waits its turn.
		c.phaseLoss = true
		return
	}
	if inflightAtLoss > 0 {
		hi := int64(inflightHeadroom * float64(inflightAtLoss))
		if c.infHi == 0 || hi < c.infHi {
			c.infHi = hi
		}
		floor := int64(c.bw.get(c.bwRound) * c.minRTT.rtt.Seconds())
		c.infHi = max(c.infHi, c.minWindow(), floor)
	}
	bw := min(c.bw.get(c.bwRound), c.bwLo)
	c.bwLo = max(c.roundMaxRate, c.lastRoundMaxRate, lossBeta*bw)
	if delivered := max(c.roundMaxRate, c.lastRoundMaxRate); delivered > 0 && delivered < lossBeta*c.bw.get(c.bwRound) {
		// The path delivers far less than the estimate remembers (the
		// link got slower): the next probe lifts bwLo, and must not go
		// back to a rate the path no longer has.
		c.bw.reset(c.bwRound, delivered)
	}
	switch c.state {
	case Startup:
		c.filledPipe = true
		c.enterDrain()
	case ProbeBW:
		c.phaseLoss = true
		if c.phase == 0 {
			c.enterPhase(now, 1) // stop probing, drain what it queued
		}
	}
}

func (c *Controller) checkFullPipe() {
	bw := c.bw.get(c.bwRound)
	if bw >= c.fullBw*fullBwGrowth {
		c.fullBw, c.fullBwCount = bw, 0
		return
	}
	c.fullBwCount++
	if c.fullBwCount >= fullBwRounds {
		c.filledPipe = true
	}
}

func (c *Controller) updateState(now Instant, sm sample) {
	switch c.state {
	case Startup:
		if c.filledPipe {
			c.enterDrain()
		}
	case Drain:
		if c.s.inflight <= c.bdp(1) {
			c.enterProbeBW(now)
		}
	case ProbeBW:
		c.advancePhase(now)
	}
	if c.state != ProbeRTT && (c.minRTT.expired(now) || c.earlyProbeRTT(now)) {
		c.enterProbeRTT()
	}
	if c.state == ProbeRTT {
		c.handleProbeRTT(now)
	}
}

func (c *Controller) enterStartup() { c.state = Startup }

func (c *Controller) enterDrain() { c.state = Drain }

func (c *Controller) enterProbeBW(now Instant) {
	c.state = ProbeBW
	c.rttHighRounds = 0 // the queue Startup built is no sign of a longer path
	// Any phase but the draining one, chosen at random, so that flows
	// sharing a bottleneck do not probe in step.
	p := c.rng.IntN(len(probeGains) - 1)
	if p >= 1 {
		p++
	}
	c.enterPhase(now, p)
}

func (c *Controller) enterPhase(now Instant, p int) {
	c.phase, c.phaseStart, c.phaseLoss = p, now, false
	if p == 0 {
		c.probeBw = c.bw.get(c.bwRound)
		// A new probe: the caps from the last congestion are lifted so
		// that it can find out whether the room has come back.
		c.bwLo, c.infHi = math.Inf(1), 0
	}
}

func (c *Controller) advancePhase(now Instant) {
	if c.probeBw > 0 && !c.phaseLoss && c.bw.get(c.bwRound) >= probeFound*c.probeBw {
		// The probe found clearly more than the estimate it began with:
		// the path has more room than the model knew (the link got
		// faster, a flow left). Probe again at once, from the new
		// estimate, rather than cruise for six round trips first.
		c.enterPhase(now, 0)
		return
	}
	elapsed := now.Sub(c.phaseStart) > c.minRTT.rtt
	switch c.phase {
	case 0:
		// Probe up for at least a round trip, and until the extra is in
		// flight (or the probe met congestion, handled in onCongestion).
		if !elapsed || c.s.inflight < c.bdp(probeGains[0]) && now.Sub(c.phaseStart) < 2*c.minRTT.rtt {
			return
		}
	case 1:
		// Drain until the queue the probe built is gone, or a round trip.
		if !elapsed && c.s.inflight > c.bdp(1) {
			return
		}
	default:
		if !elapsed {
			return
		}
	}
	c.enterPhase(now, (c.phase+1)%len(probeGains))
}

// earlyProbeRTT reports whether the RTT has stayed so far above the
// minimum that the path may have got longer, and the last such early
// measurement is long enough ago. A queue another flow keeps standing
// looks the same, and measuring it costs throughput, so each early
// measurement that finds the path as long as before doubles the wait for
// the next.
func (c *Controller) earlyProbeRTT(now Instant) bool {
	// Startup and Drain build and drain their own queue.
	if c.state != ProbeBW || c.rttHighRounds < rttHighProbe {
		return false
	}
	if c.earlyGap == 0 {
		c.earlyGap = earlyProbeGap
	}
	if c.lastProbeRTT != 0 && now.Sub(c.lastProbeRTT) < c.earlyGap {
		return false
	}
	c.earlyGap = min(2*c.earlyGap, minRTTWindow)
	return true
}

func (c *Controller) enterProbeRTT() {
	c.probeRTTs++
	c.state = ProbeRTT
	c.priorCwnd = max(c.priorCwnd, c.cwnd)
	c.probeRTTDone, c.probeRTTMin, c.probeRTTAged = 0, 0, 0
}

func (c *Controller) handleProbeRTT(now Instant) {
	if c.probeRTTDone == 0 {
		if c.s.inflight <= c.probeRTTWindow() {
			c.probeRTTDone = now.Add(probeRTTTime)
			c.probeRTTRound = c.round
		}
		return
	}
	if now < c.probeRTTDone || c.round <= c.probeRTTRound {
		return
	}
	// The window has been down for probeRTTTime and a round trip: the
	// smallest RTT seen meanwhile is the propagation time now.
	longer := false
	if c.probeRTTMin > 0 {
		longer = c.probeRTTMin > c.minRTT.rtt+max(c.minRTT.rtt/2, rttHighMin)
		c.minRTT.rtt = c.probeRTTMin
	}
	c.minRTT.stamp = now
	c.lastProbeRTT = now
	c.rttHighRounds = 0
	c.cwnd = max(c.cwnd, c.priorCwnd)
	c.priorCwnd = 0
	if longer {
		c.restarts++
		c.earlyGap = earlyProbeGap
		// The path got much longer (a new route, a move to another
		// network): the window held the rate down meanwhile, and the
		// bandwidth estimate fell with it. Find it again, fast.
		c.filledPipe, c.fullBw, c.fullBwCount = false, c.bw.get(c.bwRound), 0
		c.bwLo, c.infHi = math.Inf(1), 0
	}
	if c.filledPipe {
		c.enterProbeBW(now)
	} else {
		c.enterStartup()
	}
}

func (c *Controller) probeRTTWindow() int64 {
	return max(c.bdp(0.5), c.minWindow())
}

// bandwidth is the rate the model believes the path delivers.
func (c *Controller) bandwidth() float64 {
	return min(c.bw.get(c.bwRound), c.bwLo)
}

// bdp is gain times the bandwidth-delay product, in bytes; before any
// measurement, the initial window.
func (c *Controller) bdp(gain float64) int64 {
	bw := c.bandwidth()
	if bw == 0 || c.minRTT.rtt == 0 {
		return int64(gain * float64(c.cfg.InitialWindow))
	}
	return int64(gain * bw * c.minRTT.rtt.Seconds())
}

func (c *Controller) minWindow() int64 { return minWindowPackets * c.mss }

func (c *Controller) gains() (pacing, cwnd float64) {
	switch c.state {
	case Startup:
		return startupGain, startupCwndGain
	case Drain:
		return 1 / startupGain, startupCwndGain
	case ProbeBW:
		if c.phase != 0 {
			return probeGains[c.phase], cruiseCwndGain
		}
		return probeGains[c.phase], cwndGain
	}
	return 1, 1
}

func (c *Controller) updateWindow(acked int64) {
	_, gain := c.gains()
	target := c.bdp(gain) + 3*c.burst()
	switch {
	case c.filledPipe:
		c.cwnd = min(c.cwnd+acked, target)
	case c.cwnd < target || c.s.delivered < c.cfg.InitialWindow:
		c.cwnd += acked
	}
	if c.infHi > 0 {
		c.cwnd = min(c.cwnd, c.infHi)
	}
	if c.state == ProbeRTT {
		c.cwnd = min(c.cwnd, c.probeRTTWindow())
	}
	c.cwnd = max(c.cwnd, c.minWindow())
}

// burst is what the pacer may send at once, which the window must hold
// on top of the path's capacity.
func (c *Controller) burst() int64 { return int64(c.p.maxBurst()) }

func (c *Controller) pacingRate() float64 {
	gain, _ := c.gains()
	bw := c.bandwidth()
	if bw == 0 {
		return c.p.rate // no measurement yet: keep the initial rate
	}
	rate := gain * bw
	if c.state == ProbeBW && gain == 1 {
		rate *= 1 - pacingMargin
	}
	if c.state == Startup && !c.filledPipe {
		rate = max(rate, c.p.rate) // only up, until the pipe is full
	}
	return c.capRate(rate)
}

func (c *Controller) capRate(r float64) float64 {
	if c.cfg.RateLimit > 0 {
		return min(r, c.cfg.RateLimit)
	}
	return r
}

// CanSend reports whether a packet may go with inflight bytes in flight.
func (c *Controller) CanSend(inflight int64) bool { return inflight < c.cwnd }

// HasBudget reports whether the pacer lets a packet go at now.
func (c *Controller) HasBudget(now Instant) bool {
	c.p.rate = c.capRate(c.p.rate) // a limit set since the last acknowledgement
	return c.p.hasBudget(now)
}

// NextSend is when the pacer lets packets go again, once HasBudget said no.
func (c *Controller) NextSend() Instant { return c.p.next() }

// Window is the congestion window in bytes.
func (c *Controller) Window() int64 { return c.cwnd }

// State is the controller's phase.
func (c *Controller) State() State { return c.state }

// Stats is a snapshot of the model, for logs and tests.
type Stats struct {
	State      State
	Bandwidth  float64 // bytes per second
	MinRTT     time.Duration
	Window     int64
	PacingRate float64
	BgLoss     float64 // loss rate of rounds without a queue
	InflightHi int64   // window cap after congestion; 0: none
	Round      int64
	Delivered  int64 // bytes acknowledged since the controller began
}

// Stats returns the controller's model as it stands.
func (c *Controller) Stats() Stats {
	return Stats{
		State: c.state, Bandwidth: c.bandwidth(), MinRTT: c.minRTT.rtt,
		Window: c.cwnd, PacingRate: c.p.rate, BgLoss: c.bgLoss,
		InflightHi: c.infHi, Round: c.round, Delivered: c.s.delivered,
	}
}

// Forget drops every packet sent before t that was neither acknowledged
// nor declared lost: the QUIC stack no longer tracks it.
func (c *Controller) Forget(t Instant) { c.s.dropBefore(t) }

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
}

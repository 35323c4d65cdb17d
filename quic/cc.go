package quic

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/apernet/quic-go/congestion"
	"github.com/apernet/quic-go/monotime"
	"github.com/qbackup/qbackup/quic/bbr"
)

// Congestion names a congestion controller.
type Congestion string

// The congestion controllers a connection can use.
const (
	// BBR is package bbr's controller: it finds the path's rate and
	// round-trip time, and random loss does not slow it.
	BBR Congestion = "bbr"
	// Reno is the QUIC module's own NewReno, which halves its window at
	// every loss: for comparison, and as a fallback.
	Reno Congestion = "reno"
)

// ParseCongestion checks a controller's name.
func ParseCongestion(s string) (Congestion, error) {
	switch c := Congestion(s); c {
	case BBR, Reno:
		return c, nil
	case "":
		return BBR, nil
	}
	return "", fmt.Errorf("unknown congestion controller %q: use bbr or reno", s)
}

// UseCongestion puts a new controller of kind cc on conn, sharing limit
// (nil: none) with the other connections that use it, and returns it (nil
// for Reno). Reno leaves the module's own in place, and cannot be limited.
// Call it again after conn moves to a new path: the module then puts its
// own NewReno back.
func UseCongestion(conn *Conn, cc Congestion, limit *RateLimit) (*Controller, error) {
	switch cc {
	case BBR:
	case Reno:
		if limit != nil && limit.Rate() > 0 {
			return nil, errors.New("a rate limit needs the bbr congestion controller")
		}
		return nil, nil
	default:
		return nil, fmt.Errorf("unknown congestion controller %q", cc)
	}
	a := &bbrAdapter{c: bbr.New(bbr.Config{
		MSS:        int64(conn.InitialPacketSize()),
		InitialRTT: initialRTT(conn),
	})}
	if limit != nil {
		limit.add(conn, a)
	}
	conn.SetCongestionControl(a)
	return &Controller{a: a}, nil
}

// Controller is a controller UseCongestion put on a connection, as its
// users see it.
type Controller struct{ a *bbrAdapter }

// Stats is the controller's model of the path; the zero Stats for nil.
func (c *Controller) Stats() bbr.Stats {
	if c == nil {
		return bbr.Stats{}
	}
	c.a.mu.Lock()
	defer c.a.mu.Unlock()
	return c.a.c.Stats()
}

// InStartup reports whether the controller is still finding the path's
// rate (BBR's Startup); false for nil.
func (c *Controller) InStartup() bool { return c != nil && c.Stats().State == bbr.Startup }

// initialRTT is the RTT the connection has measured so far, to pace the
// first window by.
func initialRTT(conn *Conn) time.Duration {
	return conn.ConnectionStats().SmoothedRTT
}

// RateLimit caps the total pacing rate of the connections that share it,
// each getting an equal part (as restic's --limit-upload caps a whole
// backup, however many connections carry it). Its zero value is no limit.
type RateLimit struct {
	mu    sync.Mutex
	rate  float64 // bytes per second; 0: none
	conns map[*Conn]*bbrAdapter
}

// NewRateLimit is a limit of rate bytes per second (0: none, for now).
func NewRateLimit(rate float64) *RateLimit { return &RateLimit{rate: max(rate, 0)} }

// Rate is the limit in bytes per second, 0 for none.
func (l *RateLimit) Rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rate
}

// Set changes the limit, at once, for every connection sharing it.
func (l *RateLimit) Set(rate float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate = max(rate, 0)
	l.shareLocked()
}

// add makes a the controller of conn under the limit, in place of the
// one conn had before (UseCongestion after a path change).
func (l *RateLimit) add(conn *Conn, a *bbrAdapter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		l.conns = make(map[*Conn]*bbrAdapter)
	}
	_, known := l.conns[conn]
	l.conns[conn] = a
	l.shareLocked()
	if known {
		return
	}
	go func() {
		<-conn.Context().Done()
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.conns, conn)
		l.shareLocked()
	}()
}

func (l *RateLimit) shareLocked() {
	for _, a := range l.conns {
		a.setRateLimit(l.rate / float64(len(l.conns)))
	}
}

// bbrAdapter is package bbr's Controller as the QUIC module's
// congestion.CongestionControlEx. The module calls it from the
// connection's goroutine; a RateLimit changes it from others.
type bbrAdapter struct {
	mu  sync.Mutex
	c   *bbr.Controller
	rtt congestion.RTTStatsProvider
	// forgotten: packets sent before this were dropped from the
	// controller's books (forgetAfter).
	forgotten monotime.Time
	// ackBuf and lostBuf carry OnCongestionEventEx's packet numbers.
	ackBuf, lostBuf []int64
}

// forgetAfter: a packet neither acknowledged nor declared lost this long
// after it was sent (or four smoothed RTTs, if longer) is one the module
// stopped tracking, which it does not say; the controller forgets it. The
// controller keeps its records in sending order and drops them from the
// front, so one such packet would hold every record after it: at a
// gigabit, 30 s of them took 250 MB. The module declares a packet lost
// within about an RTT of a later one's acknowledgement.
const forgetAfter = time.Second

var _ congestion.CongestionControlEx = (*bbrAdapter)(nil)

func (a *bbrAdapter) setRateLimit(r float64) {
	a.mu.Lock()
	a.c.SetRateLimit(r)
	a.mu.Unlock()
}

func (a *bbrAdapter) SetRTTStatsProvider(p congestion.RTTStatsProvider) { a.rtt = p }

func (a *bbrAdapter) TimeUntilSend(congestion.ByteCount) monotime.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return monotime.Time(a.c.NextSend())
}

func (a *bbrAdapter) HasPacingBudget(now monotime.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.c.HasBudget(bbr.Instant(now))
}

func (a *bbrAdapter) OnPacketSent(sent monotime.Time, inflight congestion.ByteCount, pn congestion.PacketNumber, bytes congestion.ByteCount, retransmittable bool) {
	if !retransmittable {
		return // not in flight: never acknowledged on its own
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.c.OnSent(bbr.Instant(sent), int64(pn), int64(bytes), int64(inflight))
	after := forgetAfter
	if a.rtt != nil {
		after = max(after, 4*a.rtt.SmoothedRTT())
	}
	if t := sent.Add(-after); t > a.forgotten+monotime.Time(after/8) {
		a.forgotten = t
		a.c.Forget(bbr.Instant(t))
	}
}

func (a *bbrAdapter) CanSend(inflight congestion.ByteCount) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.c.CanSend(int64(inflight))
}

func (a *bbrAdapter) OnCongestionEventEx(_ congestion.ByteCount, now monotime.Time, acked []congestion.AckedPacketInfo, lost []congestion.LostPacketInfo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// One call per acknowledgement: the packet numbers go into buffers
	// kept for the next, not new slices each time.
	a.ackBuf, a.lostBuf = a.ackBuf[:0], a.lostBuf[:0]
	for _, p := range acked {
		a.ackBuf = append(a.ackBuf, int64(p.PacketNumber))
	}
	for _, p := range lost {
		a.lostBuf = append(a.lostBuf, int64(p.PacketNumber))
	}
	a.c.OnAck(bbr.Instant(now), a.ackBuf, a.lostBuf)
}

func (a *bbrAdapter) GetCongestionWindow() congestion.ByteCount {
	a.mu.Lock()
	defer a.mu.Unlock()
	return congestion.ByteCount(a.c.Window())
}

func (a *bbrAdapter) SetMaxDatagramSize(n congestion.ByteCount) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.c.SetMSS(int64(n))
}

func (a *bbrAdapter) InSlowStart() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.c.State() == bbr.Startup
}

// The per-packet calls: OnCongestionEventEx has the same news, all at once.
func (a *bbrAdapter) OnPacketAcked(congestion.PacketNumber, congestion.ByteCount, congestion.ByteCount, monotime.Time) {
}
func (a *bbrAdapter) OnCongestionEvent(congestion.PacketNumber, congestion.ByteCount, congestion.ByteCount) {
}

// A probe timeout says nothing the delivery rate and the RTT do not.
func (a *bbrAdapter) OnRetransmissionTimeout(bool) {}
func (a *bbrAdapter) MaybeExitSlowStart()          {}
func (a *bbrAdapter) InRecovery() bool             { return false }

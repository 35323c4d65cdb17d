package bbr

import "time"

// Instant is a point in time on a monotonic clock, in nanoseconds from an
// arbitrary epoch (the QUIC module's monotonic time, or a simulation's).
type Instant int64

// Sub is t-u.
func (t Instant) Sub(u Instant) time.Duration { return time.Duration(t - u) }

// Add is t+d.
func (t Instant) Add(d time.Duration) Instant { return t + Instant(d) }

// record is what the sampler keeps of one packet in flight: enough to
// compute, once it is acknowledged, the delivery rate over the time it
// was in flight (the "delivery rate estimation" of the BBR design).
type record struct {
	pn            int64
	bytes         int64
	sent          Instant
	delivered     int64   // bytes delivered when it was sent
	deliveredTime Instant // when that count last grew, as seen when it was sent
	firstSent     Instant // send time of the packet acknowledged last, as seen when it was sent
	inflight      int64   // bytes in flight once it was sent, itself included
	appLimited    bool    // sent while the sender had less to send than it could
	done          bool    // acknowledged or lost
}

// sample is what one acknowledgement teaches about the path.
type sample struct {
	// rate is the delivery rate, bytes per second, over interval; 0 if
	// this acknowledgement gives none.
	rate       float64
	interval   time.Duration
	appLimited bool          // the rate may be below what the path can carry
	rtt        time.Duration // of the newest packet acknowledged; 0 if none
	delivered  int64         // bytes delivered by this acknowledgement
	lost       int64         // bytes declared lost with it
	lostPkts   int
	// priorDelivered is the connection's delivered count when the newest
	// acknowledged packet was sent: a round trip ends when it reaches the
	// count at the round's start.
	priorDelivered int64
	// inflightAtLoss is the bytes in flight when the earliest packet
	// declared lost here was sent; 0 without loss.
	inflightAtLoss int64
}

// sampler tracks packets in flight and the connection's delivery counts.
// Packets are kept in sending order (packet numbers only grow), so a
// lookup is a binary search and finished packets leave from the front.
type sampler struct {
	recs          []record // in packet-number order; done ones linger until they reach the front
	head          int      // recs[head:] is live
	delivered     int64
	deliveredTime Instant
	firstSent     Instant
	lost          int64
	inflight      int64 // bytes of records not done
	// appLimitedUntil: samples are app-limited until the delivered count
	// passes this (0: not app-limited).
	appLimitedUntil int64
}

// onSent records a packet; appLimited says the sender had less to send
// than it was allowed to.
func (s *sampler) onSent(now Instant, pn, bytes int64, appLimited bool) {
	if s.inflight == 0 {
		// Nothing in flight: the next interval starts now, not at the
		// last acknowledgement, however long ago that was.
		s.firstSent, s.deliveredTime = now, now
	}
	if appLimited {
		s.appLimitedUntil = max(s.delivered+s.inflight+bytes, 1)
	}
	s.inflight += bytes
	s.compact()
	s.recs = append(s.recs, record{
		pn: pn, bytes: bytes, sent: now,
		delivered: s.delivered, deliveredTime: s.deliveredTime, firstSent: s.firstSent,
		inflight: s.inflight, appLimited: s.appLimitedUntil != 0,
	})
}

// find returns the live record of pn, or nil.
func (s *sampler) find(pn int64) *record {
	lo, hi := s.head, len(s.recs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.recs[m].pn < pn {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(s.recs) && s.recs[lo].pn == pn && !s.recs[lo].done {
		return &s.recs[lo]
	}
	return nil
}

// onAck takes one acknowledgement: the packets it acknowledged and those
// declared lost with it, each given by number. Unknown numbers (already
// handled, or never recorded) are ignored.
func (s *sampler) onAck(now Instant, acked, lost []int64) sample {
	var sm sample
	var newest *record
	for _, pn := range lost {
		r := s.find(pn)
		if r == nil {
			continue
		}
		r.done = true
		s.inflight -= r.bytes
		s.lost += r.bytes
		sm.lost += r.bytes
		sm.lostPkts++
		if sm.inflightAtLoss == 0 {
			sm.inflightAtLoss = r.inflight
		}
	}
	for _, pn := range acked {
		r := s.find(pn)
		if r == nil {
			continue
		}
		r.done = true
		s.inflight -= r.bytes
		s.delivered += r.bytes
		sm.delivered += r.bytes
		s.deliveredTime = now
		if newest == nil || r.delivered > newest.delivered ||
			(r.delivered == newest.delivered && r.sent > newest.sent) {
			newest = r
		}
	}
	if newest == nil {
		s.compact()
		return sm
	}
	s.firstSent = newest.sent
	sm.rtt = now.Sub(newest.sent)
	sm.priorDelivered = newest.delivered
	sm.appLimited = newest.appLimited
	if s.appLimitedUntil != 0 && s.delivered > s.appLimitedUntil {
		s.appLimitedUntil = 0
	}
	// The rate over the longer of the send and the acknowledgement
	// intervals: the shorter one can be compressed (ACKs bunched by the
	// receiver or the network), and a rate above the path's would follow.
	sendElapsed := newest.sent.Sub(newest.firstSent)
	ackElapsed := now.Sub(newest.deliveredTime)
	sm.interval = max(sendElapsed, ackElapsed)
	if sm.interval > 0 {
		sm.rate = float64(s.delivered-newest.delivered) / sm.interval.Seconds()
	}
	s.compact()
	return sm
}

// dropBefore forgets packets sent before t that were never acknowledged
// or declared lost (the QUIC stack forgot them, as when a path changes).
func (s *sampler) dropBefore(t Instant) {
	for i := s.head; i < len(s.recs) && s.recs[i].sent < t; i++ {
		if !s.recs[i].done {
			s.recs[i].done = true
			s.inflight -= s.recs[i].bytes
		}
	}
	s.compact()
}

// compact drops finished records from the front, and moves the live ones
// down once the dead prefix is large.
func (s *sampler) compact() {
	for s.head < len(s.recs) && s.recs[s.head].done {
		s.head++
	}
	if s.head == len(s.recs) {
		s.recs, s.head = s.recs[:0], 0
		return
	}
	if s.head > 1024 && s.head > len(s.recs)/2 {
		n := copy(s.recs, s.recs[s.head:])
		s.recs, s.head = s.recs[:n], 0
	}
}

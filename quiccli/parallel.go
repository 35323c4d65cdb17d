package quiccli

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// Parallel connections (send --connections N|auto). One QUIC connection's
// congestion window is shared by all its streams. Under NewReno (--cc
// reno) one connection's rate on a lossy link is capped by how it answers
// random loss, however fast the link; our BBR fills such a link alone
// (docs/benchmarks.md), and a path or host that limits each connection is
// what more of them still help with. With N connections, each with its own session key and
// window, the chunks of a file are spread over all of them: the session
// that opens an upload (the primary) asks the others, its peers, to join
// it (UploadJoin), and each chunk goes to the route with the least data
// queued (see sendLoad for how much each may queue). Checksum and commit
// stay with the primary. A peer that fails
// takes the primary down with it, so the usual reconnect-and-resume path
// starts the whole group again, sending only what the server lacks.

// MaxConnections bounds --connections, and what auto adds up to. Under
// NewReno at 1% loss and 80 ms one connection moved ~1.8 Mbit/s; 16
// reached less than half of what TCP bbr does on that link, 32 about two
// thirds (docs/benchmarks.md). The server's default --max-client-conns is 40,
// so a client has some room beyond it while old connections time out.
const MaxConnections = 32

// peerGroup is a primary session's peers. Auto adds to it while a send
// runs, so it has its own lock.
type peerGroup struct {
	mu    sync.Mutex
	list  []*Session
	done  chan struct{} // closed when the peers are closed on purpose
	added chan struct{} // closed and replaced when a peer is added

	wmu     sync.Mutex
	written chan struct{} // closed and replaced when a chunk sent from here is written
}

// writtenChan returns a channel closed when the next chunk an upload of s
// sends, over any of its connections, is written or fails.
func (s *Session) writtenChan() <-chan struct{} {
	g := &s.peers
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.written == nil {
		g.written = make(chan struct{})
	}
	return g.written
}

// chunkWritten wakes whoever waits on writtenChan.
func (s *Session) chunkWritten() {
	g := &s.peers
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.written != nil {
		close(g.written)
		g.written = nil
	}
}

// peerList returns the current peers and a channel closed when one is
// added.
func (s *Session) peerList() ([]*Session, <-chan struct{}) {
	g := &s.peers
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.added == nil {
		g.added = make(chan struct{})
	}
	return g.list, g.added
}

// route is one way to send chunks of an upload: a session and the
// transfer number the upload has there.
type route struct {
	s      *Session
	sender *proto.ChunkSender
	xfer   uint32
}

// sendLoad is what a connection's chunk sender has queued and how fast it
// writes. A sender takes up to 2×streams chunks (16 MiB by default), which
// a fast link drains in a blink but a lossy one, where a connection moves
// 1.8 Mbit/s (80 ms, 1%), takes 75 s over. Chunks given to a connection
// cannot move to another, so a file ends when its slowest queue has
// drained: with auto, the first connections filled their queues before
// the others were up, and the file's last 100 MiB crawled over the
// connections that held them. So a connection takes a chunk only while
// what it has queued would drain within paceHorizon at the rate it has
// written so far (one chunk at least, two until it has a rate): enough
// to keep the link busy, since a queue is topped up the moment a chunk is
// written, and little enough that the chunks go to whichever connection
// is free.
type sendLoad struct {
	mu     sync.Mutex
	queued int64     // bytes given to the sender and not yet written
	rate   float64   // bytes per second written while busy, smoothed; 0 until measured
	since  time.Time // when the current sample began
	bytes  int64     // written since then
}

// paceHorizon is how long a connection's queue may take to drain;
// paceSample the least time a rate sample covers (a queue that empties
// ends its sample sooner).
const (
	paceHorizon = 2 * time.Second
	paceSample  = 250 * time.Millisecond
)

// budget is how many bytes l may queue.
func (l *sendLoad) budget(chunk int) int64 {
	if l.rate == 0 {
		return 2 * int64(chunk)
	}
	return max(int64(chunk), int64(l.rate*paceHorizon.Seconds()))
}

// room reports how much l has queued, and whether it may take more.
func (l *sendLoad) room(chunk int) (queued int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queued, l.queued < l.budget(chunk)
}

// add counts n bytes queued at now.
func (l *sendLoad) add(n int64, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.queued == 0 {
		l.since, l.bytes = now, 0 // idle time does not count
	}
	l.queued += n
}

// done counts n queued bytes written (ok) or dropped, at now.
func (l *sendLoad) done(n int64, ok bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queued -= n
	if ok {
		l.bytes += n
	}
	el := now.Sub(l.since)
	if l.bytes == 0 || el <= 0 || (el < paceSample && l.queued > 0) {
		return
	}
	sample := float64(l.bytes) / el.Seconds()
	if l.rate == 0 {
		l.rate = sample
	} else {
		l.rate = 0.75*l.rate + 0.25*sample
	}
	l.since, l.bytes = now, 0
}

// routeSet is the routes of one upload, growing when peers are added.
type routeSet struct {
	s       *Session
	id      [16]byte
	list    []*route
	joined  map[*Session]bool
	changed <-chan struct{} // a peer was added since the last look
}

// routes returns the ways to send the chunks of the upload id, opened as
// xfer on s: s itself, and every peer that joined it. Files of fewer than
// two chunks to send stay on s.
func (s *Session) routes(ctx context.Context, xfer uint32, id [16]byte, missing uint64) *routeSet {
	rs := &routeSet{s: s, id: id, list: []*route{{s: s, sender: s.chunkSender(), xfer: xfer}}, joined: map[*Session]bool{s: true}}
	if missing < 2*uint64(s.chunkSize) {
		return rs
	}
	rs.refresh(ctx)
	return rs
}

// refresh joins the upload from peers added since the last look.
func (rs *routeSet) refresh(ctx context.Context) {
	peers, changed := rs.s.peerList()
	rs.changed = changed
	for _, p := range peers {
		if rs.joined[p] || p.Err() != nil {
			continue
		}
		rs.joined[p] = true
		x, err := p.join(ctx, rs.id)
		if err != nil {
			continue // the file goes over the others
		}
		rs.list = append(rs.list, &route{s: p, sender: p.chunkSender(), xfer: x})
	}
}

// groupQueueChunks bounds what all the connections of a send queue
// together, in chunks: each may queue what it drains in paceHorizon, up to
// its sender's 2×streams chunks, and on a fast link 32 connections would
// hold 16 each (838 MiB of client memory measured on loopback). The bound
// is checked, not reserved: workers picking at the same moment may each
// add one more.
const groupQueueChunks = 32

// pick returns, of the routes whose connections may queue more (sendLoad),
// the one with the least queued, after joining the upload from any peer
// added meanwhile. While none may, or they hold groupQueueChunks between
// them, it waits for a chunk to be written. A route whose sender has
// failed is returned at once, so that the caller sees its error rather
// than wait for room its queued chunks may never free.
func (rs *routeSet) pick(ctx context.Context) (*route, error) {
	chunk := rs.s.chunkSize
	for {
		if rs.changed != nil {
			select {
			case <-rs.changed:
				rs.refresh(ctx)
			default:
			}
		}
		written := rs.s.writtenChan()
		var best *route
		var least, total int64
		for _, r := range rs.list {
			if r.sender.Err() != nil {
				return r, nil
			}
			q, ok := r.s.load.room(chunk)
			total += q
			if ok && !r.s.retired.Load() && (best == nil || q < least) {
				best, least = r, q
			}
		}
		if best != nil && total < groupQueueChunks*int64(chunk) {
			return best, nil
		}
		select {
		case <-written:
		case <-rs.changed:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-rs.s.ctx.Done():
			return nil, context.Cause(rs.s.ctx)
		}
	}
}

// join joins the upload id from this session and returns its transfer
// number here.
func (s *Session) join(ctx context.Context, id [16]byte) (uint32, error) {
	c := s.newCall()
	defer s.endCall(c)
	if err := s.send(&proto.UploadJoin{Req: c.req, UploadID: id}); err != nil {
		return 0, err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		return 0, err
	}
	r, ok := m.(*proto.UploadReady)
	if !ok || r.Status != proto.ReadyJoined || r.UploadID != id {
		return 0, proto.Errorf(proto.CodeProtocol, "server answered UploadJoin with %v", m.Type())
	}
	return r.Xfer, nil
}

// peerFailed ends s because one of its peers failed: the chunks queued
// there may never arrive, so the upload cannot finish on s alone.
func (s *Session) peerFailed(err error) {
	if s.ctx.Err() != nil {
		return
	}
	s.cancel(fmt.Errorf("a parallel connection was lost: %w", err))
	s.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "a parallel connection was lost")
}

// addPeer opens one more session as s's peer. A peer whose connection
// ends while s lives ends s (peerFailed).
func (c *Client) addPeer(ctx context.Context, s *Session) error {
	p, _, err := c.Connect(ctx, "", "")
	if err != nil {
		return err
	}
	g := &s.peers
	g.mu.Lock()
	if g.done == nil {
		g.done = make(chan struct{})
	}
	done := g.done
	g.list = append(g.list, p)
	if g.added != nil {
		close(g.added)
	}
	g.added = make(chan struct{})
	g.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-p.ctx.Done():
			s.peerFailed(context.Cause(p.ctx))
		case <-done:
		case <-s.ctx.Done():
		}
	}()
	return nil
}

// addPeers opens n more peers for s, all at once: a handshake takes a few
// round trips, and one after another 31 of them took 6 s at 80 ms. It
// returns the first error, with the peers that did open added.
func (c *Client) addPeers(ctx context.Context, s *Session, n int) error {
	errs := make(chan error, n)
	for range n {
		go func() { errs <- c.addPeer(ctx, s) }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// connectPeers opens n-1 peers for s.
func (c *Client) connectPeers(ctx context.Context, s *Session, n int) {
	if err := c.addPeers(ctx, s, min(n, MaxConnections)-1); err != nil {
		c.notice("could not open every parallel connection (%v); going on with %d", err, s.peerCount())
	}
}

// peerCount reports the connections s sends over: itself and its peers
// that auto has not retired.
func (s *Session) peerCount() int {
	peers, _ := s.peerList()
	n := 1
	for _, p := range peers {
		if !p.retired.Load() {
			n++
		}
	}
	return n
}

// retire takes peers out of the send: no chunk is given to them from now
// on, and the chunks they already have go out as usual. Their connections
// stay open, idle, until the send ends: closing one would drop what it
// still has in flight.
func retire(peers []*Session) {
	for _, p := range peers {
		p.retired.Store(true)
	}
}

// abortPeers closes the peers' connections at once, dropping what they
// still had queued (an interrupted send must not drain it over a slow
// link first).
func (s *Session) abortPeers() {
	peers, _ := s.peerList()
	for _, p := range peers {
		p.conn.CloseWithError(quic.ApplicationErrorCode(proto.CodeNoError), "interrupted")
	}
}

// closePeers closes s's peers, before s itself.
func (s *Session) closePeers() {
	g := &s.peers
	g.mu.Lock()
	if g.done != nil {
		close(g.done)
		g.done = nil
	}
	list := g.list
	g.list = nil
	g.mu.Unlock()
	for _, p := range list {
		p.Close()
	}
}

// autoStep is the least time auto measures goodput over; on a long link
// it is 16 round trips, so a new connection's window can open first. Each
// doubling takes a step to warm up and one to measure: at 80 ms, 2 s
// steps had 32 connections up 22 s into a send, 1 s steps 14.5 s.
var autoStep = time.Second

// warmSteps bounds auto's warm-up, in steps.
const warmSteps = 8

// groupInStartup reports whether any connection of the send is still in
// its congestion controller's Startup, where its rate says little yet.
func (s *Session) groupInStartup() bool {
	peers, _ := s.peerList()
	for _, x := range append([]*Session{s}, peers...) {
		if !x.retired.Load() && x.ctl.Load().InStartup() {
			return true
		}
	}
	return false
}

// groupBytes is what s and its active peers have delivered so far: the
// bytes acknowledged, by our congestion controller's count, or under Reno
// QUIC's bytes sent less bytes lost. Unlike finished chunks, it moves
// smoothly even on a slow link; unlike bytes sent, it does not count what
// fills a queue on the way.
func (s *Session) groupBytes() int64 {
	peers, _ := s.peerList()
	var n int64
	for _, x := range append([]*Session{s}, peers...) {
		if x.retired.Load() {
			continue
		}
		if ctl := x.ctl.Load(); ctl != nil {
			n += ctl.Stats().Delivered
			continue
		}
		st := x.conn.ConnectionStats()
		n += int64(st.BytesSent) - int64(st.BytesLost)
	}
	return n
}

// autoConnections adds peers to s while the goodput (groupBytes) still
// rises: like slow start, it doubles the connections, lets the new ones
// warm up for a step, and measures the next. A doubling that gains less
// than a tenth over the goodput before it is measured once more (random
// loss makes a connection's rate jumpy); if it still has not paid off,
// the peers it added are retired (where one connection fills the link,
// auto settles at one), and auto stops, as it does at limit connections.
// It returns the number it settled on, when it stops or stop is closed.
func (c *Client) autoConnections(ctx context.Context, s *Session, limit int, stop <-chan struct{}) int {
	step := max(autoStep, 16*s.conn.ConnectionStats().SmoothedRTT)
	t := time.NewTicker(step)
	defer t.Stop()
	tick := func() bool {
		select {
		case <-ctx.Done():
		case <-s.ctx.Done():
		case <-stop:
		case <-t.C:
			return true
		}
		return false
	}
	base, misses := 0.0, 0 // base: the goodput before the last doubling
	var added []*Session   // the peers the last doubling added
	for {
		// Warm-up: the connections just opened. Under BBR, until each has
		// found the path's rate (left Startup), for at most warmSteps.
		for i := 0; i == 0 || (i < warmSteps && s.groupInStartup()); i++ {
			if !tick() {
				return s.peerCount()
			}
		}
		before := s.groupBytes()
		if !tick() {
			return s.peerCount()
		}
		rate := float64(s.groupBytes() - before)
		if rate <= 0 {
			continue // nothing to send at the moment: no evidence either way
		}
		if base > 0 && rate < 1.1*base {
			if misses++; misses < 2 {
				continue
			}
			retire(added)
			return s.peerCount()
		}
		misses, base = 0, rate
		peers, _ := s.peerList()
		n := s.peerCount()
		err := c.addPeers(ctx, s, min(n, limit-n))
		now, _ := s.peerList()
		added = nil
		if len(now) > len(peers) { // the group may have been closed meanwhile
			added = now[len(peers):]
		}
		if err != nil || s.peerCount() >= limit {
			return s.peerCount()
		}
		// The warm-up starts once the new peers are all up, or a tick that
		// fell due during their handshakes would cut it short and the next
		// step would measure connections still in slow start.
		t.Reset(step)
	}
}

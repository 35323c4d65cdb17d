package quiccli

import (
	"container/heap"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpProxy is a UDP relay for tests that sits between a client and a
// server: the client sends to Addr(), and for each client address the
// proxy forwards to the server from an upstream socket of its own, and
// the server's replies back. It can drop, delay and reorder packets in
// either direction, and Rebind swaps the upstream sockets for fresh ones
// so the server sees its peers come from a new port, as after a NAT
// rebinding. Every option may be changed while packets flow.
//
// Everything is bounded: at most proxyMaxSessions client addresses, and
// at most proxyQueueCap packets waiting in each direction's delay queue;
// what does not fit is dropped and counted.
type udpProxy struct {
	t      testing.TB
	ln     *net.UDPConn // where clients send
	server netip.AddrPort

	dirs [2]*proxyDir

	mu       sync.Mutex
	sessions map[netip.AddrPort]*proxySession
	order    []*proxySession // by first packet
	closed   bool

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// proxyDirection says which way a packet travels.
type proxyDirection int

const (
	toServer proxyDirection = iota
	toClient
)

func (d proxyDirection) String() string {
	if d == toServer {
		return "client→server"
	}
	return "server→client"
}

const (
	proxyMaxSessions = 64
	proxyQueueCap    = 4096
	proxyMaxPacket   = 64 << 10
)

// proxyStats counts one direction's packets.
type proxyStats struct {
	Packets, Bytes int64 // forwarded
	Dropped        int64 // dropped on purpose (SetDrop)
	Overflow       int64 // dropped because the delay queue was full
	Reordered      int64 // held back by SetReorder
}

// proxyDir is the state of one direction: its options, its random source
// for drops, its delay queue and its counters.
type proxyDir struct {
	drop        atomic.Uint64 // math.Float64bits of the drop probability
	delay       atomic.Int64  // one-way delay, ns
	reorderN    atomic.Int64  // hold back every Nth packet (0: never)
	reorderHold atomic.Int64  // by this much more, ns
	seq         atomic.Int64  // packets seen, to pick every Nth
	cutAfter    atomic.Int64  // > 0: drop everything once bytes has reached it
	rate        atomic.Int64  // > 0: the link's rate, bytes/s

	rateMu sync.Mutex
	free   time.Time // when the rate-limited link has sent what it holds

	rngMu sync.Mutex
	rng   *rand.Rand

	q *delayQueue

	packets, bytes, dropped, overflow, reordered atomic.Int64
}

// proxySession is one client address and its upstream socket; after a
// Rebind, the earlier upstream sockets stay listed (closed) for their
// counters.
type proxySession struct {
	client netip.AddrPort
	up     atomic.Pointer[proxyUpstream]
	all    []*proxyUpstream // guarded by udpProxy.mu
}

// proxyUpstream is one socket the proxy talks to the server from.
type proxyUpstream struct {
	conn  *net.UDPConn
	Local string // its address, as the server sees it

	Sent, SentBytes         atomic.Int64 // to the server from this socket
	Received, ReceivedBytes atomic.Int64 // from the server on this socket, before any drop
}

// startUDPProxy starts a proxy in front of server (host:port). seed seeds
// the drop decisions, one random stream per direction. The proxy stops
// when the test ends.
func startUDPProxy(t testing.TB, server string, seed uint64) *udpProxy {
	t.Helper()
	sa, err := netip.ParseAddrPort(server)
	if err != nil {
		ua, rerr := net.ResolveUDPAddr("udp", server)
		if rerr != nil {
			t.Fatalf("proxy: server address %q: %v", server, rerr)
		}
		sa = ua.AddrPort()
	}
	ln, err := listenProxyUDP()
	if err != nil {
		t.Fatalf("proxy: listen: %v", err)
	}
	p := &udpProxy{
		t:        t,
		ln:       ln,
		server:   netip.AddrPortFrom(sa.Addr().Unmap(), sa.Port()),
		sessions: make(map[netip.AddrPort]*proxySession),
		done:     make(chan struct{}),
	}
	for i := range p.dirs {
		d := &proxyDir{
			rng: rand.New(rand.NewPCG(seed, uint64(i)+0x5eed)),
			q:   newDelayQueue(proxyQueueCap),
		}
		p.dirs[i] = d
		dir := proxyDirection(i)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			d.q.run(p.done, func(s *proxySession, b []byte) { p.send(dir, s, b) })
		}()
	}
	p.wg.Add(1)
	go p.readClients()
	t.Cleanup(p.Close)
	return p
}

// Addr is where clients send.
func (p *udpProxy) Addr() string { return p.ln.LocalAddr().String() }

// SetDrop drops packets going direction d with probability prob.
func (p *udpProxy) SetDrop(d proxyDirection, prob float64) {
	p.dirs[d].drop.Store(math.Float64bits(prob))
}

// SetDelay delays packets going direction d by delay.
func (p *udpProxy) SetDelay(d proxyDirection, delay time.Duration) {
	p.dirs[d].delay.Store(int64(delay))
}

// SetReorder holds every nth packet going direction d back by hold on top
// of the delay, so the packets behind it overtake it. n = 0 turns it off.
func (p *udpProxy) SetReorder(d proxyDirection, n int, hold time.Duration) {
	p.dirs[d].reorderHold.Store(int64(hold))
	p.dirs[d].reorderN.Store(int64(n))
}

// proxyRateQueue is how much a rate-limited direction holds back before it
// drops what comes (a bottleneck router's buffer, in time).
const proxyRateQueue = 50 * time.Millisecond

// SetRate limits direction d to bytesPerSec (0: no limit), with a queue
// of proxyRateQueue before it: the packets wait their turn, and those that
// find the queue full are dropped, as at a bottleneck link.
func (p *udpProxy) SetRate(d proxyDirection, bytesPerSec int64) {
	p.dirs[d].rate.Store(bytesPerSec)
}

// SetCutAfter makes direction d die once it has carried n bytes (counted
// as they leave the proxy, so the packets already delayed still go);
// 0 brings it back.
func (p *udpProxy) SetCutAfter(d proxyDirection, n int64) {
	p.dirs[d].cutAfter.Store(n)
}

// SetLink sets loss, delay and reordering the same both ways.
func (p *udpProxy) SetLink(drop float64, delay time.Duration, reorderN int, hold time.Duration) {
	for _, d := range []proxyDirection{toServer, toClient} {
		p.SetDrop(d, drop)
		p.SetDelay(d, delay)
		p.SetReorder(d, reorderN, hold)
	}
}

// Stats returns direction d's counters.
func (p *udpProxy) Stats(d proxyDirection) proxyStats {
	x := p.dirs[d]
	return proxyStats{
		Packets:   x.packets.Load(),
		Bytes:     x.bytes.Load(),
		Dropped:   x.dropped.Load(),
		Overflow:  x.overflow.Load(),
		Reordered: x.reordered.Load(),
	}
}

// Upstreams returns, for each client address in order of first contact,
// its upstream sockets, oldest first: the last one is in use.
func (p *udpProxy) Upstreams() [][]*proxyUpstream {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out [][]*proxyUpstream
	for _, s := range p.order {
		out = append(out, append([]*proxyUpstream(nil), s.all...))
	}
	return out
}

// Rebind gives every client address a new upstream socket, and closes the
// old one: packets the server sends to the old address are lost, as when
// a NAT forgets a mapping. Packets waiting in the delay queue leave from
// the new socket. It returns how many sessions were rebound.
func (p *udpProxy) Rebind() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0
	}
	n := 0
	for _, s := range p.order {
		up, err := p.newUpstreamLocked(s)
		if err != nil {
			p.t.Errorf("proxy: rebind: %v", err)
			continue
		}
		if old := s.up.Swap(up); old != nil {
			old.conn.Close()
		}
		n++
	}
	return n
}

// Close stops the proxy: it closes every socket and waits for its
// goroutines. It is safe to call more than once.
func (p *udpProxy) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		var ups []*proxyUpstream
		for _, s := range p.order {
			if up := s.up.Load(); up != nil {
				ups = append(ups, up)
			}
		}
		p.mu.Unlock()
		close(p.done)
		p.ln.Close()
		for _, up := range ups {
			up.conn.Close()
		}
		p.wg.Wait()
	})
}

// newUpstreamLocked opens an upstream socket for s and starts reading it.
func (p *udpProxy) newUpstreamLocked(s *proxySession) (*proxyUpstream, error) {
	c, err := listenProxyUDP()
	if err != nil {
		return nil, err
	}
	up := &proxyUpstream{conn: c, Local: c.LocalAddr().String()}
	s.all = append(s.all, up)
	p.wg.Add(1)
	go p.readUpstream(s, up)
	return up, nil
}

// listenProxyUDP opens a loopback socket with buffers as large as the
// system allows (up to 4 MiB), like quic-go's own: with the default ~200
// KiB a burst overflows the kernel's buffer before the proxy reads it,
// and losses the test did not ask for would muddle what it measures.
func listenProxyUDP() (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(4 << 20) // best effort: capped by net.core.rmem_max
	c.SetWriteBuffer(4 << 20)
	return c, nil
}

// session returns the session of a client address, creating it on its
// first packet; nil once closed or at the session limit.
func (p *udpProxy) session(from netip.AddrPort) *proxySession {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.sessions[from]; s != nil {
		return s
	}
	if p.closed || len(p.sessions) >= proxyMaxSessions {
		return nil
	}
	s := &proxySession{client: from}
	up, err := p.newUpstreamLocked(s)
	if err != nil {
		p.t.Errorf("proxy: upstream socket: %v", err)
		return nil
	}
	s.up.Store(up)
	p.sessions[from] = s
	p.order = append(p.order, s)
	return s
}

func (p *udpProxy) readClients() {
	defer p.wg.Done()
	buf := make([]byte, proxyMaxPacket)
	for {
		n, from, err := p.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			if p.stopped(err) {
				return
			}
			continue
		}
		if s := p.session(from); s != nil {
			p.forward(toServer, s, buf[:n])
		}
	}
}

func (p *udpProxy) readUpstream(s *proxySession, up *proxyUpstream) {
	defer p.wg.Done()
	buf := make([]byte, proxyMaxPacket)
	for {
		n, from, err := up.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if p.stopped(err) {
				return
			}
			continue
		}
		if from.Addr().Unmap() != p.server.Addr() || from.Port() != p.server.Port() {
			continue // not from the server
		}
		up.Received.Add(1)
		up.ReceivedBytes.Add(int64(n))
		p.forward(toClient, s, buf[:n])
	}
}

// stopped reports whether a read error means the socket is gone.
func (p *udpProxy) stopped(err error) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	return errors.Is(err, net.ErrClosed)
}

// forward applies direction d's drop, delay and reordering to b, which the
// caller reuses once forward returns.
func (p *udpProxy) forward(d proxyDirection, s *proxySession, b []byte) {
	x := p.dirs[d]
	if cut := x.cutAfter.Load(); cut > 0 && x.bytes.Load() >= cut {
		x.dropped.Add(1)
		return
	}
	if prob := math.Float64frombits(x.drop.Load()); prob > 0 {
		x.rngMu.Lock()
		r := x.rng.Float64()
		x.rngMu.Unlock()
		if r < prob {
			x.dropped.Add(1)
			return
		}
	}
	delay := time.Duration(x.delay.Load())
	seq := x.seq.Add(1)
	if n := x.reorderN.Load(); n > 0 && seq%n == 0 {
		delay += time.Duration(x.reorderHold.Load())
		x.reordered.Add(1)
	}
	now := time.Now()
	if r := x.rate.Load(); r > 0 {
		x.rateMu.Lock()
		start := now
		if x.free.After(now) {
			start = x.free
		}
		if start.Sub(now) > proxyRateQueue {
			x.rateMu.Unlock()
			x.overflow.Add(1)
			return
		}
		x.free = start.Add(time.Duration(int64(len(b)) * int64(time.Second) / r))
		delay += x.free.Sub(now)
		x.rateMu.Unlock()
	}
	if delay <= 0 {
		p.send(d, s, b)
		return
	}
	if !x.q.push(now.Add(delay), s, append([]byte(nil), b...)) {
		x.overflow.Add(1)
	}
}

// send puts b on the wire: to the server from s's current upstream socket,
// or to the client from the listening socket.
func (p *udpProxy) send(d proxyDirection, s *proxySession, b []byte) {
	x := p.dirs[d]
	var err error
	switch d {
	case toServer:
		up := s.up.Load()
		if _, err = up.conn.WriteToUDPAddrPort(b, p.server); err == nil {
			up.Sent.Add(1)
			up.SentBytes.Add(int64(len(b)))
		}
	case toClient:
		_, err = p.ln.WriteToUDPAddrPort(b, s.client)
	}
	if err == nil {
		x.packets.Add(1)
		x.bytes.Add(int64(len(b)))
	}
}

// delayQueue holds packets until their time, earliest first; ties leave
// in the order they came.
type delayQueue struct {
	mu   sync.Mutex
	h    delayHeap
	n    uint64
	cap  int
	wake chan struct{}
}

type delayed struct {
	at  time.Time
	n   uint64
	s   *proxySession
	pkt []byte
}

type delayHeap []delayed

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].n < h[j].n
	}
	return h[i].at.Before(h[j].at)
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)   { *h = append(*h, x.(delayed)) }
func (h *delayHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = delayed{}
	*h = old[:len(old)-1]
	return x
}

func newDelayQueue(capacity int) *delayQueue {
	return &delayQueue{cap: capacity, wake: make(chan struct{}, 1)}
}

// push queues pkt for at; false if the queue is full.
func (q *delayQueue) push(at time.Time, s *proxySession, pkt []byte) bool {
	q.mu.Lock()
	if len(q.h) >= q.cap {
		q.mu.Unlock()
		return false
	}
	q.n++
	heap.Push(&q.h, delayed{at: at, n: q.n, s: s, pkt: pkt})
	first := q.h[0].n == q.n
	q.mu.Unlock()
	if first { // the new packet is due before the one the loop waits for
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

func (q *delayQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.h)
}

// run sends packets as they come due until done is closed; what is still
// queued then is dropped.
func (q *delayQueue) run(done <-chan struct{}, send func(*proxySession, []byte)) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []delayed
	for {
		q.mu.Lock()
		now := time.Now()
		due = due[:0]
		for len(q.h) > 0 && !q.h[0].at.After(now) {
			due = append(due, heap.Pop(&q.h).(delayed))
		}
		wait := time.Hour
		if len(q.h) > 0 {
			wait = q.h[0].at.Sub(now)
		}
		q.mu.Unlock()
		for i := range due {
			send(due[i].s, due[i].pkt)
			due[i] = delayed{}
		}
		timer.Reset(wait)
		select {
		case <-done:
			return
		case <-q.wake:
		case <-timer.C:
		}
	}
}

// TestUDPProxy checks the proxy itself against a UDP echo server.
func TestUDPProxy(t *testing.T) {
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var seenMu sync.Mutex
	seen := map[string]int{} // source addresses the echo server saw
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			seenMu.Lock()
			seen[from.String()]++
			seenMu.Unlock()
			echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { echo.Close(); <-echoDone })

	p := startUDPProxy(t, echo.LocalAddr().String(), 1)
	cl, err := net.DialUDP("udp", nil, p.ln.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	// roundTrips sends count numbered packets while reading the echoes
	// until none came for quiet, and returns the numbers in the order they
	// came back. It sends in small bursts so no socket buffer overflows:
	// every loss is the proxy's.
	roundTrips := func(count int, quiet time.Duration) []int {
		t.Helper()
		ch := make(chan []int)
		go func() {
			var got []int
			buf := make([]byte, 16)
			for {
				cl.SetReadDeadline(time.Now().Add(quiet))
				n, err := cl.Read(buf)
				if err != nil {
					ch <- got
					return
				}
				if n == 2 {
					got = append(got, int(buf[0])<<8|int(buf[1]))
				}
			}
		}()
		for i := range count {
			if _, err := cl.Write([]byte{byte(i >> 8), byte(i)}); err != nil {
				t.Error(err)
			}
			if i%20 == 19 {
				time.Sleep(time.Millisecond)
			}
		}
		return <-ch
	}

	// Plain forwarding, in order.
	got := roundTrips(100, 200*time.Millisecond)
	if len(got) != 100 {
		t.Fatalf("plain: %d of 100 echoes came back", len(got))
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("plain: echo %d is packet %d: reordered without being asked to", i, v)
		}
	}
	if s := p.Stats(toServer); s.Packets != 100 || s.Bytes != 200 || s.Dropped != 0 {
		t.Errorf("plain: client→server stats %+v", s)
	}

	// Delay both ways: a round trip takes at least twice the delay, and
	// order is kept.
	p.SetDelay(toServer, 30*time.Millisecond)
	p.SetDelay(toClient, 30*time.Millisecond)
	start := time.Now()
	got = roundTrips(1, 300*time.Millisecond)
	if rtt := time.Since(start) - 300*time.Millisecond; len(got) != 1 || rtt < 60*time.Millisecond {
		t.Errorf("delayed: %d echoes, round trip %v; want 1 and ≥ 60ms", len(got), rtt)
	}
	got = roundTrips(200, 300*time.Millisecond)
	for i, v := range got {
		if v != i {
			t.Fatalf("delayed: echo %d is packet %d: a constant delay must keep the order", i, v)
		}
	}

	// Reordering: every 10th packet falls behind the ones after it.
	p.SetReorder(toServer, 10, 20*time.Millisecond)
	got = roundTrips(100, 300*time.Millisecond)
	inversions := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inversions++
		}
	}
	if len(got) != 100 || inversions == 0 || p.Stats(toServer).Reordered == 0 {
		t.Errorf("reorder: %d echoes, %d inversions, stats %+v; want 100 and some of each", len(got), inversions, p.Stats(toServer))
	}
	p.SetReorder(toServer, 0, 0)
	p.SetDelay(toServer, 0)
	p.SetDelay(toClient, 0)

	// Drops: all, then about a half, and the counts add up.
	before := p.Stats(toServer)
	p.SetDrop(toServer, 1)
	if got := roundTrips(50, 100*time.Millisecond); len(got) != 0 {
		t.Errorf("drop 1: %d echoes came back", len(got))
	}
	p.SetDrop(toServer, 0.5)
	got = roundTrips(400, 200*time.Millisecond)
	after := p.Stats(toServer)
	dropped := after.Dropped - before.Dropped
	if dropped+int64(len(got)) != 450 || len(got) < 120 || len(got) > 280 {
		t.Errorf("drop 0.5: %d echoes of 400, %d dropped of 450", len(got), dropped)
	}
	p.SetDrop(toServer, 0)

	// Rebinding: the echo server sees a new source, and replies to it
	// come back to the same client socket.
	ups := p.Upstreams()
	if len(ups) != 1 || len(ups[0]) != 1 {
		t.Fatalf("upstreams before rebind: %d sessions", len(ups))
	}
	oldLocal := ups[0][0].Local
	if n := p.Rebind(); n != 1 {
		t.Fatalf("Rebind rebound %d sessions, want 1", n)
	}
	if got := roundTrips(10, 200*time.Millisecond); len(got) != 10 {
		t.Errorf("after rebind: %d of 10 echoes", len(got))
	}
	ups = p.Upstreams()
	if len(ups[0]) != 2 || ups[0][1].Local == oldLocal {
		t.Fatalf("after rebind: upstreams %d, want a second one on a new port", len(ups[0]))
	}
	seenMu.Lock()
	newSeen := seen[ups[0][1].Local]
	seenMu.Unlock()
	if newSeen != 10 || ups[0][1].Received.Load() != 10 {
		t.Errorf("after rebind: the echo server saw %d packets from %s and sent %d back to it; want 10 and 10", newSeen, ups[0][1].Local, ups[0][1].Received.Load())
	}

	// Close stops everything, with packets still queued.
	p.SetDelay(toClient, time.Hour)
	for i := range 10 {
		cl.Write([]byte{0, byte(i)})
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.dirs[toClient].q.len() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if p.dirs[toClient].q.len() == 0 {
		t.Errorf("nothing queued behind an hour's delay")
	}
	p.Close()
	if _, err := p.ln.WriteToUDPAddrPort([]byte{1}, echo.LocalAddr().(*net.UDPAddr).AddrPort()); err == nil {
		t.Errorf("the proxy's socket is still open after Close")
	}
}

// TestProxyDelayQueueIsBounded fills a delay queue past its capacity: the
// excess is refused, and packets leave earliest first.
func TestProxyDelayQueueIsBounded(t *testing.T) {
	q := newDelayQueue(8)
	now := time.Now()
	for i := range 8 {
		// 7, 6, ..., 0 ms from now: pushed latest first.
		if !q.push(now.Add(time.Duration(7-i)*time.Millisecond), nil, []byte{byte(7 - i)}) {
			t.Fatalf("push %d refused below capacity", i)
		}
	}
	if q.push(now, nil, []byte{99}) || q.len() != 8 {
		t.Fatalf("push past capacity accepted (len %d)", q.len())
	}
	done := make(chan struct{})
	out := make(chan byte, 16)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		q.run(done, func(_ *proxySession, b []byte) { out <- b[0] })
	}()
	for want := range byte(8) {
		select {
		case got := <-out:
			if got != want {
				t.Errorf("packet %d left in position %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d never left the queue", want)
		}
	}
	// Room again once drained.
	if !q.push(time.Now().Add(time.Hour), nil, []byte{1}) {
		t.Errorf("push refused after the queue drained")
	}
	close(done)
	<-finished
}

package quiccli

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/qbackup/qbackup/quic"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
	"github.com/quic-go/quic-go/testutils/simnet"
)

// lossyRouter delivers packets like simnet's PerfectRouter but drops a
// share of them, chosen by a seeded generator, and every packet between
// down and up (an outage). With nat set, the clients (10.0.1.x) sit
// behind a NAT: the server sees them at natIP, on a port that changes at
// rebind (a NAT rebinding), after which the old mapping is gone.
type lossyRouter struct {
	simnet.PerfectRouter
	mu            sync.Mutex
	rng           *rand.Rand
	loss          float64
	down, up      time.Time
	nat           bool
	rebind        time.Time
	sent, dropped int
	rebound       int // packets sent through the new mapping
}

var natIP = net.IPv4(192, 0, 2, 1)

// clientHost returns x if addr is a client's, 10.0.1.x.
func clientHost(addr net.Addr) (int, bool) {
	ip := addr.(*net.UDPAddr).IP.To4()
	if ip == nil || ip[0] != 10 || ip[1] != 0 || ip[2] != 1 {
		return 0, false
	}
	return int(ip[3]), true
}

func (r *lossyRouter) SendPacket(p simnet.Packet) error {
	r.mu.Lock()
	r.sent++
	now := time.Now()
	drop := r.rng.Float64() < r.loss || (!now.Before(r.down) && now.Before(r.up))
	if r.nat && !drop {
		// The mapping: 10.0.1.x:40000 <-> natIP:(10000 + 100*epoch + x).
		epoch := 0
		if !r.rebind.IsZero() && !now.Before(r.rebind) {
			epoch = 1
		}
		if x, ok := clientHost(p.From); ok {
			p.From = &net.UDPAddr{IP: natIP, Port: 10000 + 100*epoch + x}
			if epoch == 1 {
				r.rebound++
			}
		}
		if to := p.To.(*net.UDPAddr); to.IP.Equal(natIP) {
			if (to.Port-10000)/100 != epoch {
				drop = true // the old mapping is gone
			} else {
				p.To = &net.UDPAddr{IP: net.IPv4(10, 0, 1, byte(to.Port%100)), Port: 40000}
			}
		}
	}
	if drop {
		r.dropped++
	}
	r.mu.Unlock()
	if drop {
		return nil
	}
	return r.PerfectRouter.SendPacket(p)
}

// TestSimulatedLossyLinks sends a file over links simulated in process
// (quic-go's simnet: latency each way, random loss), then restores it, in
// testing/synctest's virtual time: a satellite's round trip or a 20 s
// outage costs no real time, and no timeout depends on how busy the
// machine is. (Which packets are lost still depends on how goroutines
// happen to run, so the figures logged vary from run to run.) The file is stored
// whole and comes back identical, within the resend bound, also when the
// link goes down for a while in the middle of the send or a NAT gives the
// client a new address; the send carries on in one connection.
func TestSimulatedLossyLinks(t *testing.T) {
	tests := []simLink{
		{name: "20 ms, 1%", oneWay: 10 * time.Millisecond, loss: 0.01, size: 4 << 20, maxTime: 5 * time.Minute},
		{name: "300 ms, 2%", oneWay: 150 * time.Millisecond, loss: 0.02, size: 2 << 20, maxTime: 30 * time.Minute},
		{name: "20 ms, 1%, 20 s outage", oneWay: 10 * time.Millisecond, loss: 0.01, size: 4 << 20, maxTime: 5 * time.Minute,
			outageAfter: 100 * time.Millisecond, outage: 20 * time.Second},
		{name: "50 ms, 0.5%, NAT rebinding", oneWay: 25 * time.Millisecond, loss: 0.005, size: 4 << 20, maxTime: 5 * time.Minute,
			nat: true, rebindAfter: 200 * time.Millisecond},
		{name: "50 ms, 1%, restore cut off by a 20 s outage", oneWay: 25 * time.Millisecond, loss: 0.01, size: 4 << 20, maxTime: 5 * time.Minute,
			restoreOutageAfter: 150 * time.Millisecond, restoreOutage: 20 * time.Second},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				simulatedSend(t, tt, uint64(i+1))
			})
		})
	}
}

// simLink is a simulated link and what to send over it.
type simLink struct {
	name        string
	oneWay      time.Duration // latency each way
	loss        float64       // share of packets dropped, each way
	size        int           // of the file
	maxTime     time.Duration // virtual time for register, send and restore
	outageAfter time.Duration // into the send, the link goes down ...
	outage      time.Duration // ... for this long (0: never)
	nat         bool          // the client is behind a NAT (lossyRouter) ...
	rebindAfter time.Duration // ... that gives it a new port this far into the send (0: never)
	// Into the restore, the link goes down for this long (0: never), past
	// the client's idle timeout (5 s here): it reconnects and resumes.
	restoreOutageAfter, restoreOutage time.Duration
}

func simulatedSend(t *testing.T, sl simLink, seed uint64) {
	oneWay, loss, size, maxTime := sl.oneWay, sl.loss, sl.size, sl.maxTime
	router := &lossyRouter{rng: rand.New(rand.NewPCG(seed, 7)), loss: loss, nat: sl.nat}
	network := &simnet.Simnet{Router: router}
	link := simnet.NodeBiDiLinkSettings{Latency: oneWay}
	srvConn := network.NewEndpoint(&net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 7443}, link)
	// A socket for each session: register, send, restore, and spares for
	// reconnections.
	var clientConns []net.PacketConn
	for i := range 8 {
		clientConns = append(clientConns, network.NewEndpoint(&net.UDPAddr{IP: net.IPv4(10, 0, 1, byte(i+1)), Port: 40000}, link))
	}
	network.Start()
	defer network.Close()

	srv := srvtest.StartOn(t, srvConn, func(s *quicsrv.Server) { s.ChunkSize = testChunk })
	c := newClient(t)
	c.Stall = -1 // one socket per session: the path watchdog would want another
	var mu sync.Mutex
	dials := 0
	c.dialHook = func(o *dialOptions) {
		if sl.restoreOutage > 0 {
			o.QUICConfig = func(q *quic.Config) {
				q.MaxIdleTimeout = 5 * time.Second
				q.KeepAlivePeriod = time.Second
			}
		}
		o.PacketConn = func() (net.PacketConn, error) {
			mu.Lock()
			defer mu.Unlock()
			dials++
			if len(clientConns) == 0 {
				return nil, errors.New("test: no simulated socket left")
			}
			pc := clientConns[0]
			clientConns = clientConns[1:]
			return pc, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), maxTime)
	defer cancel()
	start := time.Now()
	register(t, ctx, c, srv, "alice")

	path := filepath.Join(t.TempDir(), "f.bin")
	data := writeRandom(t, path, size, seed)
	sendStart := time.Now()
	router.mu.Lock()
	if sl.outage > 0 {
		router.down = sendStart.Add(sl.outageAfter)
		router.up = router.down.Add(sl.outage)
	}
	if sl.rebindAfter > 0 {
		router.rebind = sendStart.Add(sl.rebindAfter)
	}
	router.mu.Unlock()
	res, err := c.SendResilient(ctx, "", "", SendOptions{Paths: []string{path}},
		ReconnectOptions{Attempts: 3, MaxWait: time.Second}, nopReporter{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 1 || res.Failed != 0 {
		t.Fatalf("sent %d, failed %d (%v)", res.Sent, res.Failed, res.FirstErr)
	}
	sendTime := time.Since(sendStart)
	if sl.outage > 0 && sendTime < sl.outageAfter+sl.outage {
		t.Errorf("the send took %v, over before the link came back: the outage missed it", sendTime)
	}
	router.mu.Lock()
	rebound := router.rebound
	router.mu.Unlock()
	if sl.rebindAfter > 0 && (sendTime < sl.rebindAfter || rebound == 0) {
		t.Errorf("the send took %v, %d packets through the new NAT mapping: the rebinding missed it", sendTime, rebound)
	}
	assertResendBound(t, res.Bytes, int64(size))

	restoreStart := time.Now()
	if sl.restoreOutage > 0 {
		router.mu.Lock()
		router.down = restoreStart.Add(sl.restoreOutageAfter)
		router.up = router.down.Add(sl.restoreOutage)
		router.mu.Unlock()
	}
	out := filepath.Join(t.TempDir(), "out")
	rep := &cutReporter{at: math.MaxInt64}
	rres, err := c.RestoreResilient(ctx, RestoreOptions{Name: "f.bin", Output: out}, ReconnectOptions{Attempts: 5, MaxWait: time.Second}, rep)
	if err != nil {
		t.Fatal(err)
	}
	if rres.Files != 1 {
		t.Fatalf("restored %d files (%v)", rres.Files, rres.FirstErr)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Errorf("restored %d bytes that differ from the %d sent", len(got), len(data))
	}
	restoreTime := time.Since(restoreStart)
	t.Logf("restore: %v, received %.3f× the file, %d reconnection warnings", restoreTime.Round(time.Millisecond),
		float64(rres.Received)/float64(size), rep.warns.Load())
	if float64(rres.Received) > 1.05*float64(size) {
		t.Errorf("received %d bytes in all for a %d-byte file: over 1.05×", rres.Received, size)
	}
	mu.Lock()
	switch {
	case sl.restoreOutage == 0 && dials != 3:
		t.Errorf("%d connections for register, send and restore, want 3: the send did not carry on in one", dials)
	case sl.restoreOutage > 0 && (restoreTime < sl.restoreOutageAfter+sl.restoreOutage || rep.warns.Load() == 0):
		t.Errorf("the restore took %v and never reconnected (%d connections): the outage missed it", restoreTime, dials)
	}
	mu.Unlock()
	router.mu.Lock()
	defer router.mu.Unlock()
	t.Logf("virtual time: %v in all, send %v (%.2f Mbit/s); %d packets, %d dropped (%.1f%%)",
		time.Since(start).Round(time.Millisecond), sendTime.Round(time.Millisecond),
		float64(size)*8/sendTime.Seconds()/1e6, router.sent, router.dropped, 100*float64(router.dropped)/float64(max(router.sent, 1)))
	if router.dropped == 0 {
		t.Errorf("no packet dropped: the link was not lossy")
	}
}

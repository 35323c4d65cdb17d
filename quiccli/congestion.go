package quiccli

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// pace asks the server to send this session's connection at most rate
// bytes per second (restore --limit).
func (s *Session) pace(ctx context.Context, rate uint64) error {
	c := s.newCall()
	defer s.endCall(c)
	if err := s.send(&proto.Pace{Req: c.req, Rate: rate}); err != nil {
		return err
	}
	m, err := s.wait(ctx, c)
	if err != nil {
		return fmt.Errorf("limiting the rate the server sends at: %w", err)
	}
	if p, ok := m.(*proto.Paced); !ok || p.Rate != rate {
		return proto.Errorf(proto.CodeProtocol, "server answered a Pace of %d with %v", rate, m.Type())
	}
	return nil
}

// firstWrite is a socket that tells when it is first written to after
// arm: the first packet the connection sends on a path it switched to.
// The switch happens in the connection's own goroutine some time after
// Path.Switch returns, and puts the QUIC module's NewReno in place of our
// controller; the packet it sends then is the sign that ours can go back
// (followPath), and its write is ordered after the switch.
type firstWrite struct {
	armed atomic.Bool
	once  sync.Once
	done  chan struct{}
}

func (f *firstWrite) arm() { f.armed.Store(true) }

func (f *firstWrite) wrote() {
	if f.armed.Load() {
		f.once.Do(func() { close(f.done) })
	}
}

// udpFirstWrite keeps every method of *net.UDPConn, which the QUIC module
// uses for batched and ECN-marked I/O, and watches the writes.
type udpFirstWrite struct {
	*net.UDPConn
	f *firstWrite
}

func (u *udpFirstWrite) WriteTo(b []byte, addr net.Addr) (int, error) {
	u.f.wrote()
	return u.UDPConn.WriteTo(b, addr)
}

func (u *udpFirstWrite) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	u.f.wrote()
	return u.UDPConn.WriteMsgUDP(b, oob, addr)
}

func (u *udpFirstWrite) WriteMsgUDPAddrPort(b, oob []byte, addr netip.AddrPort) (int, int, error) {
	u.f.wrote()
	return u.UDPConn.WriteMsgUDPAddrPort(b, oob, addr)
}

type pcFirstWrite struct {
	net.PacketConn
	f *firstWrite
}

func (p *pcFirstWrite) WriteTo(b []byte, addr net.Addr) (int, error) {
	p.f.wrote()
	return p.PacketConn.WriteTo(b, addr)
}

// watchFirstWrite wraps pc so that the returned firstWrite learns of its
// first write after arm.
func watchFirstWrite(pc net.PacketConn) (net.PacketConn, *firstWrite) {
	f := &firstWrite{done: make(chan struct{})}
	if u, ok := pc.(*net.UDPConn); ok {
		return &udpFirstWrite{UDPConn: u, f: f}, f
	}
	return &pcFirstWrite{PacketConn: pc, f: f}, f
}

// switchWait bounds how long followPath waits for the switch to happen.
const switchWait = 10 * time.Second

// followPath puts the session's congestion controller back once the
// connection has switched to the path whose socket moved watches.
func (s *Session) followPath(moved *firstWrite) {
	if s.cc == quic.Reno {
		return
	}
	t := time.NewTimer(switchWait)
	defer t.Stop()
	select {
	case <-moved.done:
	case <-t.C:
		return // the connection never sent on the new path: it is failing anyway
	case <-s.ctx.Done():
		return
	}
	ctl, err := quic.UseCongestion(s.conn, s.cc, s.limit)
	if err != nil {
		return // refused only for Reno with a limit, which dial refused first
	}
	s.ctl.Store(ctl)
	s.ccMoves.Add(1)
}

package quicsrv

import (
	"cmp"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quic"
)

// useCongestion puts the server's congestion controller on the session's
// connection. It runs before the handshake: the fork writes its own
// NewReno in place of the controller, without its lock, when the client
// moves, and a client can move only after Welcome, which the connection
// sends after this install; so the two writes are ordered.
func (ss *session) useCongestion() {
	cc := ss.srv.Congestion
	if cc == "" {
		cc = quic.BBR
	}
	if cc == quic.Reno {
		return
	}
	ss.pacing = quic.NewRateLimit(0)
	if _, err := quic.UseCongestion(ss.conn, cc, ss.pacing); err != nil {
		ss.log.Error("congestion controller", "err", err)
		ss.pacing = nil
	}
}

// keepCongestion keeps our controller on the connection once the client is
// authenticated: when the client moves to a new address (a new network, a
// NAT rebinding), the QUIC module puts its own NewReno back, and
// followPath puts ours back in turn.
func (ss *session) keepCongestion() {
	if ss.pacing == nil {
		return
	}
	cc := cmp.Or(ss.srv.Congestion, quic.BBR)
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		ss.followPath(cc)
	}()
}

// pathCheckEvery is how often followPath looks at the client's address.
const pathCheckEvery = 100 * time.Millisecond

// followPath reinstalls the controller whenever the connection's remote
// address changes. The module changes the address only after it has
// replaced the controller, and the address is read atomically, so the
// controller installed here is never overwritten by that change.
func (ss *session) followPath(cc quic.Congestion) {
	addr := ss.conn.RemoteAddr().String()
	t := time.NewTicker(pathCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ss.ctx.Done():
			return
		case <-t.C:
		}
		now := ss.conn.RemoteAddr().String()
		if now == addr {
			continue
		}
		ss.log.Info("client moved", "from", addr, "to", now)
		addr = now
		if _, err := quic.UseCongestion(ss.conn, cc, ss.pacing); err != nil {
			ss.log.Error("congestion controller", "err", err)
			return
		}
		ss.srv.pathMoves.Add(1)
	}
}

// pace caps the rate the server sends this connection at (the client's
// restore --limit).
func (ss *session) pace(m *proto.Pace) {
	if ss.pacing == nil {
		ss.sendError(m.Req, proto.Errorf(proto.CodeUnsupported, "this server cannot limit the rate it sends at: it runs with --cc reno"))
		return
	}
	ss.pacing.Set(float64(m.Rate))
	ss.log.Debug("pacing", "bytes_per_second", m.Rate)
	ss.send(&proto.Paced{Req: m.Req, Rate: m.Rate})
}

// ControllersRestored is how many times the server put its congestion
// controller back on a connection whose client had moved to a new
// address.
func (s *Server) ControllersRestored() int64 { return s.pathMoves.Load() }

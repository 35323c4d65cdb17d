package quiccli

import (
	"context"
	"fmt"
	"time"
)

// DefaultStall is how long a session's network path may stay silent before
// the client acts on it (Client.Stall).
const DefaultStall = 10 * time.Second

// keepAliveFor is the keep-alive period that goes with a stall timeout: an
// idle but healthy connection must hear from the server (the ACK of a
// keep-alive PING) well within the stall timeout, or the watchdog would
// take idleness for a dead path.
func keepAliveFor(stall time.Duration) time.Duration {
	if stall <= 0 {
		return 5 * time.Second
	}
	return min(5*time.Second, stall/3)
}

// errPathStalled ends a session whose path went silent and could not be
// moved; SendResilient reconnects and resumes after it.
type errPathStalled struct{ silent time.Duration }

func (e *errPathStalled) Error() string {
	return fmt.Sprintf("nothing heard from the server for %v, and a new socket could not reach it either", e.silent.Round(100*time.Millisecond))
}

// watchPath notices when the network path of the session goes silent:
// quic-go keeps sending (data, or a keep-alive PING at least every
// keepAliveFor(stall)) and nothing comes back for stall. That is what a
// Wi-Fi that lost its uplink, a cell hand-over that kept the old address,
// or a NAT that dropped its mapping look like; a change of address alone
// does not need this, since the socket is not bound to an address and the
// server follows the new one.
//
// It first moves the connection to a new local socket (Migrate: probe the
// new path, switch when the server answers), so the same session, its key
// and its transfers carry on. quic-go sends the path probe only when
// its congestion window has room, which a dead path carrying an upload
// never gives back (the bytes in flight there are never acknowledged), so
// the move mostly saves downloads (restore), where the client sends little.
// When it cannot, the session ends with errPathStalled at once, instead of
// after the 60 s idle timeout, and send reconnects and resumes.
func (s *Session) watchPath(stall time.Duration, notice func(string, ...any)) {
	tick := min(max(stall/10, 50*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	heard, at := s.conn.ConnectionStats().PacketsReceived, time.Now()
	wait := stall // the silence that makes the watchdog act
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if n := s.conn.ConnectionStats().PacketsReceived; n != heard {
			heard, at, wait = n, time.Now(), stall
			continue
		}
		silent := time.Since(at)
		if silent < wait {
			continue
		}
		notice("nothing heard from the server for %v: moving the connection to a new socket", silent.Round(100*time.Millisecond))
		ctx, cancel := context.WithTimeout(s.ctx, s.probeTimeout())
		err := s.Migrate(ctx)
		cancel()
		if s.ctx.Err() != nil {
			return
		}
		if err == nil {
			notice("moved to a new socket; carrying on")
			heard, at = s.conn.ConnectionStats().PacketsReceived, time.Now()
			wait = max(stall, settleAfterMove)
			continue
		}
		s.abandon(&errPathStalled{silent: time.Since(at)})
		return
	}
}

// probeTimeout bounds one attempt to move to a new path: a few round trips
// of the path so far, and never less than 3 s.
func (s *Session) probeTimeout() time.Duration {
	return max(3*time.Second, 8*s.conn.ConnectionStats().SmoothedRTT)
}

// abandon ends a session whose path is dead: nothing more can be said to
// the server, so it only closes the connection locally.
func (s *Session) abandon(cause error) {
	s.cancel(cause)
	s.closeTransport()
}

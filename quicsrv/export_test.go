package quicsrv

// Test hooks for the external tests of this package.

// ShuttingDown reports whether Shutdown or Close has begun. Shutdown asks
// every session to drain in the same critical section that sets this, so
// once it reports true every session present then is draining.
func ShuttingDown(s *Server) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// DrainSessions asks every session to end once its transfers are done, as
// Shutdown does, but leaves the listener and the transport alone.
func DrainSessions(s *Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		ss.drain()
	}
}

// SessionCount reports how many sessions the server is running, including
// those still in their handshake.
func SessionCount(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// ActiveUploads reports how many uploads sessions are receiving.
func ActiveUploads(s *Server) int {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	return len(s.active)
}

// BudgetInUse reports the bytes taken from the server's memory budget.
func BudgetInUse(s *Server) int64 { return s.memoryInUse() }

// ClientMemoryInUse is what a client's sessions hold of its share.
func ClientMemoryInUse(s *Server, id [16]byte) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.accounts[id]; st != nil {
		return st.windows.share.inUse() + st.buffers.share.inUse()
	}
	return 0
}

// Sizes of the memory budget's parts, for tests.
const (
	InitialConnWindow = initialConnWindow
	MinTransferMemory = minTransferMemory
)

// WrittenBytes reports how many bytes the uploads sessions are receiving
// have written so far, all together.
func WrittenBytes(s *Server) uint64 {
	s.activeMu.Lock()
	defer s.activeMu.Unlock()
	var n uint64
	for _, u := range s.active {
		u.mu.Lock()
		n += u.written
		u.mu.Unlock()
	}
	return n
}

// ScrubRead reports how many bytes the scrub has read.
func ScrubRead(s *Server) int64 { return s.scrubRead.Load() }

// FilesInUse reports the descriptors transfers hold in the server's
// open-file budget (a file being opened counts twice).
func FilesInUse(s *Server) int {
	n, _ := s.files().inUse([16]byte{})
	return n
}

// OpenFileCaps reports the caps on transfers' open files in force.
func OpenFileCaps(s *Server) (total, perClient int) { return s.files().total, s.files().perClient }

// UnderLoad reports whether new connections must answer a QUIC Retry.
func UnderLoad(s *Server) bool { return s.underLoad(nil) }

// Retries is how many new connections were asked to answer a Retry.
func Retries(s *Server) int64 { return s.retries.Load() }

package proto

// SetSealerCounter sets the nonce counter of s, so that tests can reach the
// end of the nonce space without sealing 2^64 chunks.
func SetSealerCounter(s *Sealer, v uint64) { s.counter.Store(v) }

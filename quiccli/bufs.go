package quiccli

import (
	"sync/atomic"
	"unsafe"
)

// directAlign is the memory and file offset alignment of the chunks a
// restore writes with direct I/O: the page size, which is what file
// systems ask for, or a multiple of it. Chunks sit at multiples of the
// chunk size, a multiple of it.
const directAlign = 4096

// aligned reports whether p starts at a multiple of directAlign.
func aligned(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

// heldBudget bounds the chunk buffers a session's restore sinks hold to
// hash from memory, and separately the free buffers kept for reuse: a
// server that sends every file's chunks out of order costs the client at
// most this much twice, however many files are restored at once.
const heldBudget = 32 << 20

// alignedBuffers lends a session's restore streams the buffers that chunks
// are read and decrypted into (a proto.BufferSource): aligned for direct
// I/O, and held by restore sinks until they have hashed them, within
// heldBudget. It keeps free buffers for reuse, within heldBudget too, and
// lets the rest go.
type alignedBuffers struct {
	size      int          // a buffer's length: a chunk and its tag
	free      chan []byte  // buffers to reuse, at full length
	held      atomic.Int64 // buffers held by sinks
	holdLimit int64        // at most this many
}

func newAlignedBuffers(size int) *alignedBuffers {
	n := max(1, heldBudget/size)
	return &alignedBuffers{size: size, free: make(chan []byte, n), holdLimit: int64(n)}
}

// Get returns a buffer of length n, aligned to directAlign.
func (a *alignedBuffers) Get(n int) ([]byte, error) {
	if n <= a.size {
		select {
		case b := <-a.free:
			return b[:n], nil
		default:
		}
	}
	b := alignedSlice(max(n, a.size))
	return b[:n], nil
}

// Put takes back a buffer from Get. A nil alignedBuffers takes nothing.
func (a *alignedBuffers) Put(b []byte) {
	if a == nil || cap(b) < a.size {
		return
	}
	select {
	case a.free <- b[:a.size]:
	default: // enough kept: let the collector have it
	}
}

// hold reports whether a sink may hold one more buffer, and counts it if
// so; unhold gives the place back. A nil alignedBuffers holds nothing.
func (a *alignedBuffers) hold() bool {
	if a == nil {
		return false
	}
	if a.held.Add(1) > a.holdLimit {
		a.held.Add(-1)
		return false
	}
	return true
}

func (a *alignedBuffers) unhold() { a.held.Add(-1) }

// alignedSlice allocates n bytes that start at a multiple of directAlign.
func alignedSlice(n int) []byte {
	b := make([]byte, n+directAlign)
	off := (directAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign)) % directAlign
	return b[off : off+n : off+n]
}

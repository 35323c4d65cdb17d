package quiccli

import "unsafe"

// directAlign is the memory and file offset alignment of the chunks a
// restore writes with direct I/O: the page size, which is what file
// systems ask for, or a multiple of it. Chunks sit at multiples of the
// chunk size, a multiple of it.
const directAlign = 4096

// aligned reports whether p starts at a multiple of directAlign.
func aligned(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

// alignedBuffers lends a session's restore streams the buffers that chunks
// are read and decrypted into (a proto.BufferSource): aligned for direct
// I/O, and held by a restore sink until it has hashed them. It keeps up
// to a fixed number of free buffers for reuse and lets the rest go.
type alignedBuffers struct {
	size int         // a buffer's length: a chunk and its tag
	free chan []byte // buffers to reuse, at full length
}

// alignedFree is how many free buffers alignedBuffers keeps: one per data
// stream and the chunks sinks hold.
const alignedFree = 16 + maxHeld

func newAlignedBuffers(size int) *alignedBuffers {
	return &alignedBuffers{size: size, free: make(chan []byte, alignedFree)}
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

// alignedSlice allocates n bytes that start at a multiple of directAlign.
func alignedSlice(n int) []byte {
	b := make([]byte, n+directAlign)
	off := (directAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign)) % directAlign
	return b[off : off+n : off+n]
}

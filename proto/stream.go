package proto

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
)

// This file holds the two halves of a data stream that both ends share:
// ChunkSender seals chunks and spreads them over a fixed set of streams;
// ReadChunkFrames reads one stream's frames and hands out the plaintext.
// They see streams as io.Writer and io.Reader, so this package stays free
// of QUIC.

// ChunkSender seals chunks and writes them on up to Streams data streams,
// each opened on first need and fed by its own goroutine. Plaintext
// buffers come from a fixed pool, so the memory a sender holds is bounded
// by (streams*2) chunk buffers whatever is being sent, and frame buffers
// from another of (streams); both are allocated only when no free one is
// at hand, so a sender that never has more than a few chunks queued holds
// a few buffers. (A client with 32 connections, each sender keeping every
// buffer it had ever allocated, peaked at 838 MiB.)
//
// When the streams can be prioritised (quic-go's SetPriority), the sender
// has the connection send the oldest chunk it holds first, at the whole
// connection's rate, instead of all of them round robin, packet by
// packet: on a slow link chunks then arrive, are written and can be
// checkpointed one every chunk-size of goodput, in order, rather than a
// round of Streams chunks at once; and a transfer cut off loses at most
// the chunk under way, not one per stream. (Over 300 ms at 2% loss one
// connection moves about 0.35 Mbit/s: 8 MiB chunks half-sent round robin
// took minutes, and were all lost when the link died.) The link is shared
// either way, so throughput is the same.
type ChunkSender struct {
	open      func(ctx context.Context) (io.WriteCloser, error)
	sealer    *Sealer
	chunkSize int
	jobs      chan chunkJob
	free      chan []byte   // plaintext buffers not in use
	mayAlloc  chan struct{} // a token for each plaintext buffer not yet allocated
	frames    chan []byte   // frame buffers not in use
	ctx       context.Context
	cancel    context.CancelCauseFunc
	wg        sync.WaitGroup
	closeMu   sync.RWMutex // Send holds it shared, Close exclusively
	closed    bool

	seq     atomic.Uint64 // numbers the chunks in the order Send takes them
	orderMu sync.Mutex
	held    []heldChunk // chunks the stream goroutines hold, from taking to written
}

// Data stream priorities: the stream with the oldest chunk held first,
// then the others by stream ID (not round robin); both below QUIC's
// default urgency 3, so that the control stream always goes first.
const (
	urgencyOldest = 4
	urgencyOthers = 5
)

// prioritizer is a stream whose sending priority can be set: quic-go's
// SendStream.SetPriority (RFC 9218 urgency, lower first; incremental
// streams share round robin, the others go one at a time).
type prioritizer interface {
	SetPriority(urgency int8, incremental bool)
}

type heldChunk struct {
	seq uint64
	pr  prioritizer
}

// hold records that the stream pr is about to write chunk seq, and sets
// its priority: first if no older chunk is held.
func (s *ChunkSender) hold(seq uint64, pr prioritizer) {
	if pr == nil {
		return
	}
	s.orderMu.Lock()
	defer s.orderMu.Unlock()
	oldest := true
	for _, h := range s.held {
		oldest = oldest && h.seq > seq
	}
	s.held = append(s.held, heldChunk{seq, pr})
	if oldest {
		for _, h := range s.held[:len(s.held)-1] {
			h.pr.SetPriority(urgencyOthers, false)
		}
		pr.SetPriority(urgencyOldest, false)
	} else {
		pr.SetPriority(urgencyOthers, false)
	}
}

// written forgets chunk seq and, if it was the oldest, moves the stream
// with the next oldest to the front.
func (s *ChunkSender) written(seq uint64, pr prioritizer) {
	if pr == nil {
		return
	}
	s.orderMu.Lock()
	defer s.orderMu.Unlock()
	i := slices.IndexFunc(s.held, func(h heldChunk) bool { return h.seq == seq })
	if i < 0 {
		return
	}
	s.held = slices.Delete(s.held, i, i+1)
	if len(s.held) == 0 {
		return
	}
	next := slices.MinFunc(s.held, func(a, b heldChunk) int { return cmp.Compare(a.seq, b.seq) })
	if next.seq > seq {
		next.pr.SetPriority(urgencyOldest, false)
	}
}

type chunkJob struct {
	seq  uint64
	xfer uint32
	id   *[16]byte
	off  uint64
	buf  []byte // a pool buffer, sliced to the plaintext
	sent func(n int, err error)
}

// NewChunkSender starts a sender with the given number of streams, each
// opened with open when it first has something to carry. Every chunk is at
// most chunkSize bytes. The sender stops when ctx ends or Close is called.
func NewChunkSender(ctx context.Context, sealer *Sealer, streams, chunkSize int, open func(ctx context.Context) (io.WriteCloser, error)) *ChunkSender {
	ctx, cancel := context.WithCancelCause(ctx)
	s := &ChunkSender{
		open:      open,
		sealer:    sealer,
		chunkSize: chunkSize,
		jobs:      make(chan chunkJob, streams),
		free:      make(chan []byte, 2*streams),
		mayAlloc:  make(chan struct{}, 2*streams),
		frames:    make(chan []byte, streams),
		ctx:       ctx,
		cancel:    cancel,
	}
	for range 2 * streams {
		s.mayAlloc <- struct{}{} // allocated lazily, so an idle sender costs nothing
	}
	s.wg.Add(streams)
	for range streams {
		go s.run()
	}
	return s
}

// ChunkSize is the largest plaintext a chunk carries.
func (s *ChunkSender) ChunkSize() int { return s.chunkSize }

// Buffer returns a free plaintext buffer of ChunkSize bytes, waiting for one
// if all are in use. Pass it to Send, or back with Release.
func (s *ChunkSender) Buffer(ctx context.Context) ([]byte, error) {
	select {
	case b := <-s.free: // one allocated before, if there is one
		return b[:s.chunkSize], nil
	default:
	}
	select {
	case b := <-s.free:
		return b[:s.chunkSize], nil
	case <-s.mayAlloc:
		return make([]byte, s.chunkSize), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
}

// Release returns an unused buffer to the pool.
func (s *ChunkSender) Release(b []byte) { s.free <- b[:0] }

// Send queues plaintext (a buffer from Buffer, sliced to the chunk's bytes)
// as the chunk at off of transfer xfer, whose durable ID is id. The buffer
// belongs to the sender from now on. sent, if not nil, is called from a
// stream goroutine once the frame is written (n plaintext bytes) or failed.
func (s *ChunkSender) Send(ctx context.Context, xfer uint32, id *[16]byte, off uint64, plaintext []byte, sent func(n int, err error)) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		s.Release(plaintext)
		return errSenderClosed
	}
	if s.ctx.Err() != nil { // the stream goroutines may be gone: queue nothing
		s.Release(plaintext)
		return context.Cause(s.ctx)
	}
	select {
	case s.jobs <- chunkJob{seq: s.seq.Add(1), xfer: xfer, id: id, off: off, buf: plaintext, sent: sent}:
		return nil
	case <-ctx.Done():
		s.Release(plaintext)
		return context.Cause(ctx)
	case <-s.ctx.Done():
		s.Release(plaintext)
		return context.Cause(s.ctx)
	}
}

// Err returns why the sender stopped, or nil while it runs.
func (s *ChunkSender) Err() error {
	if s.ctx.Err() == nil {
		return nil
	}
	return context.Cause(s.ctx)
}

// Close stops the sender once queued chunks are written and closes its
// streams. It returns the first stream error, if any.
func (s *ChunkSender) Close() error {
	s.closeMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.jobs)
	}
	s.closeMu.Unlock()
	s.wg.Wait()
	err := context.Cause(s.ctx)
	s.cancel(errSenderClosed)
	if errors.Is(err, errSenderClosed) {
		return nil
	}
	return err
}

var errSenderClosed = errors.New("proto: chunk sender closed")

func (s *ChunkSender) run() {
	defer s.wg.Done()
	var w io.WriteCloser
	var pr prioritizer // w, if its priority can be set
	fail := func(j chunkJob, err error) {
		s.cancel(err)
		if j.sent != nil {
			j.sent(0, err)
		}
		s.Release(j.buf)
	}
	for {
		var j chunkJob
		var ok bool
		select {
		case j, ok = <-s.jobs:
		case <-s.ctx.Done():
			// Fail whatever is still queued, so its buffers go back and
			// its sent is called. A Send under way holds closeMu shared
			// and may still queue a job; once it is out, later ones see
			// the cancelled ctx and queue nothing, so this drain, with
			// closeMu held, is the last word.
			s.closeMu.Lock()
		drain:
			for {
				select {
				case j, ok := <-s.jobs:
					if !ok {
						break drain
					}
					fail(j, context.Cause(s.ctx))
				default:
					break drain
				}
			}
			s.closeMu.Unlock()
			if w != nil {
				w.Close()
			}
			return
		}
		if !ok {
			if w != nil {
				if err := w.Close(); err != nil {
					s.cancel(err)
				}
			}
			return
		}
		if w == nil {
			// Only a stream that opened and took its type byte is kept: an
			// open that fails may still return a typed nil.
			nw, err := s.open(s.ctx)
			if err != nil {
				fail(j, fmt.Errorf("proto: open data stream: %w", err))
				continue
			}
			if _, err := nw.Write([]byte{StreamTypeChunks}); err != nil {
				fail(j, err)
				continue
			}
			w = nw
			pr, _ = w.(prioritizer)
		}
		s.hold(j.seq, pr)
		var frame []byte
		select {
		case frame = <-s.frames:
		default: // AppendFrame allocates one
		}
		frame, err := s.sealer.AppendFrame(frame[:0], j.xfer, j.id, j.off, j.buf)
		n := len(j.buf)
		s.Release(j.buf)
		if err == nil {
			_, err = w.Write(frame)
		}
		select {
		case s.frames <- frame:
		default:
		}
		s.written(j.seq, pr)
		if err != nil {
			s.cancel(err)
			if j.sent != nil {
				j.sent(0, err)
			}
			continue
		}
		if j.sent != nil {
			j.sent(n, nil)
		}
	}
}

// ReadChunkFrames reads chunk frames with cr from a data stream whose type
// byte has been read, until the stream ends, and closes cr. For each frame
// it asks resolve for the transfer's durable ID (resolve returns an error
// for an unknown or closed transfer, which ends the stream unless it is
// ErrSkipChunk), authenticates and decrypts the chunk in place and passes
// its header and plaintext to handle, which must keep neither, unless it
// takes the plaintext's buffer with cr.Detach. A clean end of stream
// returns nil.
func ReadChunkFrames(cr *ChunkReader, opener *Opener, resolve func(xfer uint32) (*[16]byte, error), handle func(h *ChunkHeader, plaintext []byte) error) error {
	defer cr.Close()
	// handle gets a pointer to the reader's copy of the header: a header
	// declared here would move to the heap.
	h := &cr.header
	for {
		var ct []byte
		var err error
		*h, ct, err = cr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		id, err := resolve(h.Xfer)
		if errors.Is(err, ErrSkipChunk) {
			continue
		}
		if err != nil {
			return err
		}
		p, err := opener.Open(ct[:0], h, id, ct)
		if err != nil {
			return err
		}
		if err := handle(h, p); err != nil {
			return err
		}
	}
}

// ErrSkipChunk, returned by a resolve function, drops the chunk and goes on
// reading (a late chunk of a transfer that was just abandoned).
var ErrSkipChunk = errors.New("proto: skip chunk")

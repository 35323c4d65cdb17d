package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// pieceHeaderSize is the length of the header before every piece sent to
// a server that stores: file index (4 bytes), file size (8), offset (8)
// and length (4), big-endian.
const pieceHeaderSize = 24

// storeBit, set in the total the client announces, says that its pieces
// carry headers, for a server that stores. The two must agree: a server
// that stores cannot parse bare pieces, and one that does not would count
// the headers as data and confirm too early.
const storeBit = 1 << 63

func putPieceHeader(b []byte, file int, size, off int64, n int) {
	binary.BigEndian.PutUint32(b[0:], uint32(file))
	binary.BigEndian.PutUint64(b[4:], uint64(size))
	binary.BigEndian.PutUint64(b[12:], uint64(off))
	binary.BigEndian.PutUint32(b[20:], uint32(n))
}

// store writes the pieces a server receives into files of one directory.
// Its files are named by index; a file is created by its first piece and
// closed by the one that completes it.
type store struct {
	dir   string
	chunk int // the largest piece
	mu    sync.Mutex
	files map[uint32]*storeFile
}

type storeFile struct {
	f    *os.File
	size int64
	got  int64 // bytes written, under store.mu
}

func openStore(dir string, chunk int) (*store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &store{dir: dir, chunk: chunk, files: make(map[uint32]*storeFile)}, nil
}

// receive reads framed pieces from r until it ends, writes each where its
// header says, and counts its bytes with add.
func (s *store) receive(r io.Reader, add func(int)) error {
	var hdr [pieceHeaderSize]byte
	buf := make([]byte, s.chunk)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		idx := binary.BigEndian.Uint32(hdr[0:])
		size := int64(binary.BigEndian.Uint64(hdr[4:]))
		off := int64(binary.BigEndian.Uint64(hdr[12:]))
		n := int(binary.BigEndian.Uint32(hdr[20:]))
		if n > len(buf) || size < 0 || off < 0 || off > size || int64(n) > size-off {
			return fmt.Errorf("bad piece header: file %d size %d offset %d length %d", idx, size, off, n)
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return err
		}
		sf, err := s.file(idx, size)
		if err != nil {
			return err
		}
		if _, err := sf.f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		if err := s.wrote(idx, sf, n); err != nil {
			return err
		}
		add(n)
	}
}

// file returns the open file of index idx, creating it at its first piece.
func (s *store) file(idx uint32, size int64) (*storeFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sf := s.files[idx]; sf != nil {
		if sf.size != size {
			return nil, fmt.Errorf("file %d: pieces disagree on its size (%d, %d)", idx, sf.size, size)
		}
		return sf, nil
	}
	f, err := os.OpenFile(filepath.Join(s.dir, strconv.FormatUint(uint64(idx), 10)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	sf := &storeFile{f: f, size: size}
	s.files[idx] = sf
	return sf, nil
}

// wrote counts n bytes written to sf and closes it once it is whole.
func (s *store) wrote(idx uint32, sf *storeFile, n int) error {
	s.mu.Lock()
	sf.got += int64(n)
	whole := sf.got == sf.size
	s.mu.Unlock()
	if !whole {
		return nil
	}
	return sf.f.Close() // the file stays in the map: no piece may reopen it
}

// sync makes every stored byte durable: one syncfs for the file system of
// the directory, as qbackupd's group commit does for small files.
func (s *store) sync() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := syncFS(d); err != nil {
		return fmt.Errorf("sync %s: %w", s.dir, err)
	}
	return nil
}

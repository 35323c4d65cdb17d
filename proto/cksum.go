package proto

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/bits"
	"runtime"
	"sync"
)

// cksumPoly is the POSIX cksum generator polynomial in MSB-first form.
const cksumPoly = 0x04C11DB7

// Cksum computes the POSIX cksum CRC incrementally, giving the same value as
// the first field printed by coreutils "cksum FILE". It implements
// hash.Hash32: Sum appends the 4-byte big-endian final value, Size is 4 and
// BlockSize is 1. The zero value is ready to use.
type Cksum struct {
	crc uint32 // raw MSB-first register (init 0, not complemented)
	n   uint64 // bytes written so far
}

var _ hash.Hash32 = (*Cksum)(nil)

// NewCksum returns a new, empty Cksum.
func NewCksum() *Cksum { return &Cksum{} }

// Write adds p to the running checksum. It never returns an error.
func (c *Cksum) Write(p []byte) (int, error) {
	c.crc = CRCUpdate(c.crc, p)
	c.n += uint64(len(p))
	return len(p), nil
}

// Sum32 returns the final cksum value of the bytes written so far (the
// length folded in, complemented). It does not change the state, so more
// data may be written afterwards.
func (c *Cksum) Sum32() uint32 { return CksumFinish(c.crc, c.n) }

// Sum appends the big-endian final cksum value to b and returns the result.
// It does not change the state.
func (c *Cksum) Sum(b []byte) []byte { return binary.BigEndian.AppendUint32(b, c.Sum32()) }

// Reset returns c to its initial, empty state.
func (c *Cksum) Reset() { *c = Cksum{} }

// Size returns the number of bytes Sum appends: 4.
func (c *Cksum) Size() int { return 4 }

// BlockSize returns the hash's underlying block size: 1.
func (c *Cksum) BlockSize() int { return 1 }

// Len returns the number of bytes written since creation or the last Reset.
func (c *Cksum) Len() uint64 { return c.n }

// CksumBytes returns the POSIX cksum value of p.
func CksumBytes(p []byte) uint32 { return CksumFinish(CRCUpdate(0, p), uint64(len(p))) }

// CRCUpdate advances a raw MSB-first CRC-32 register (polynomial 0x04C11DB7,
// not complemented, no length folded in) over p and returns the new
// register. Start from 0; CksumFinish turns the register into the cksum
// value. Registers of separately processed pieces can be joined with
// CRCCombine. CRCUpdate is safe for concurrent use.
func CRCUpdate(crc uint32, p []byte) uint32 {
	if cksumUseFold && len(p) >= cksumFoldMin {
		return cksumUpdateFold(crc, p)
	}
	if cksumUseRev && len(p) >= cksumRevMin {
		return cksumUpdateRev(crc, p)
	}
	return cksumUpdateTable(crc, p)
}

// CRCCombine returns the raw register of A||B given the raw register crcA
// of A (started from 0), the raw register crcB of B (started from 0) and
// lenB = len(B). It costs O(log lenB) and never looks at the data. A lenB
// of 0 or less is treated as an empty B and returns crcA ^ crcB (that is,
// crcA, since the register of an empty B is 0).
func CRCCombine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA ^ crcB
	}
	// Raw CRC without pre/post conditioning is linear:
	// crc(A||B) = crcA * x^(8*lenB) mod P  XOR  crc(B).
	// Multiplying by x^(8*2^k) mod P is the precomputed GF(2) matrix
	// cksumShiftOps[k]; apply one per set bit of lenB.
	for k := 0; lenB != 0; k++ {
		if lenB&1 != 0 {
			crcA = cksumMatVec(&cksumShiftOps[k], crcA)
		}
		lenB >>= 1
	}
	return crcA ^ crcB
}

// CksumFinish turns a raw register over n bytes into the final cksum value:
// it feeds the length as the minimal sequence of bytes, least-significant
// byte first (nothing for n == 0), then complements the register.
func CksumFinish(crc uint32, n uint64) uint32 {
	t := cksumTab
	for ; n != 0; n >>= 8 {
		crc = crc<<8 ^ t[0][byte(crc>>24)^byte(n)]
	}
	return ^crc
}

// ---------------------------------------------------------------------------
// Table (slicing-by-16) path.

// cksumTab[k][b] is the register after feeding byte b followed by k zero
// bytes into a zero register. It is reached through a pointer variable so
// the compiler keeps the base in a register instead of rematerialising the
// symbol address for each of the 16 lookups.
var cksumTab = new([16][256]uint32)

func init() {
	t := cksumTab
	for i := range 256 {
		c := uint32(i) << 24
		for range 8 {
			if c&0x80000000 != 0 {
				c = c<<1 ^ cksumPoly
			} else {
				c <<= 1
			}
		}
		t[0][i] = c
	}
	for k := 1; k < len(t); k++ {
		for i := range 256 {
			c := t[k-1][i]
			t[k][i] = c<<8 ^ t[0][c>>24]
		}
	}
}

// cksumUpdateTable is CRCUpdate using slicing-by-16 tables only.
func cksumUpdateTable(crc uint32, p []byte) uint32 {
	t := cksumTab
	for len(p) >= 16 {
		a := binary.BigEndian.Uint64(p)
		b := binary.BigEndian.Uint64(p[8:])
		// The 12 lookups that do not depend on crc go first, in a
		// balanced tree, so only 4 loads and 3 xors sit on the
		// loop-carried dependency chain.
		x := ((t[11][byte(a>>24)] ^ t[10][byte(a>>16)]) ^ (t[9][byte(a>>8)] ^ t[8][byte(a)])) ^
			(((t[7][byte(b>>56)] ^ t[6][byte(b>>48)]) ^ (t[5][byte(b>>40)] ^ t[4][byte(b>>32)])) ^
				((t[3][byte(b>>24)] ^ t[2][byte(b>>16)]) ^ (t[1][byte(b>>8)] ^ t[0][byte(b)])))
		h := uint32(a>>32) ^ crc
		crc = x ^ ((t[15][h>>24] ^ t[14][byte(h>>16)]) ^ (t[13][byte(h>>8)] ^ t[12][byte(h)]))
		p = p[16:]
	}
	if len(p) >= 8 {
		a := binary.BigEndian.Uint64(p)
		x := (t[3][byte(a>>24)] ^ t[2][byte(a>>16)]) ^ (t[1][byte(a>>8)] ^ t[0][byte(a)])
		h := uint32(a>>32) ^ crc
		crc = x ^ ((t[7][h>>24] ^ t[6][byte(h>>16)]) ^ (t[5][byte(h>>8)] ^ t[4][byte(h)]))
		p = p[8:]
	}
	for _, b := range p {
		crc = crc<<8 ^ t[0][byte(crc>>24)^b]
	}
	return crc
}

// ---------------------------------------------------------------------------
// Bit-reversal path.
//
// hash/crc32's IEEE code uses carry-less multiplication (PCLMULQDQ, or the
// CRC32 instructions on arm64, ...) for the reflected polynomial 0xEDB88320,
// the bit-reversal of 0x04C11DB7. The MSB-first CRC of a message equals the
// 32-bit reversal of the reflected CRC (same init, no final xor) of the
// message with every byte bit-reversed, so we reverse the bits of each byte
// into a pooled block buffer and let crc32 do the heavy lifting.

// cksumUseRev reports whether hash/crc32 has a hardware IEEE path on this
// architecture (see hash/crc32/crc32_$GOARCH.go). Elsewhere crc32 falls back
// to slicing-by-8 and the byte reversal would only add cost. On amd64 crc32
// needs PCLMULQDQ and SSE4.1, present on every x86-64 CPU since ~2010; on
// older ones the result is still correct, only slower than the tables.
// CRCUpdate prefers the folding code of cksum_amd64.s where it can run, so
// on amd64 this path serves only purego builds and CPUs without PCLMULQDQ.
const cksumUseRev = runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" ||
	runtime.GOARCH == "ppc64le" || runtime.GOARCH == "s390x" || runtime.GOARCH == "loong64"

// cksumRevMin is the input length from which CRCUpdate takes the
// bit-reversal path (below it the tables are at least as fast).
const cksumRevMin = 512

// cksumRevBlock is the size of the pooled buffer bit-reversed data is
// staged in; small enough to stay in L1/L2 while crc32 reads it back.
const cksumRevBlock = 8 << 10

var cksumRevPool = sync.Pool{New: func() any { return new([cksumRevBlock]byte) }}

// cksumUpdateRev is CRCUpdate via hash/crc32's IEEE implementation on
// bit-reversed bytes.
func cksumUpdateRev(crc uint32, p []byte) uint32 {
	buf := cksumRevPool.Get().(*[cksumRevBlock]byte)
	// crc32.Update(c, IEEETable, p) == ^raw(^c, p), where raw is the
	// unconditioned reflected register update; keep u = ^raw across calls.
	u := ^bits.Reverse32(crc)
	for len(p) >= cksumRevBlock {
		cksumRevBlockBits(buf, (*[cksumRevBlock]byte)(p))
		u = crc32.Update(u, crc32.IEEETable, buf[:])
		p = p[cksumRevBlock:]
	}
	if len(p) > 0 {
		cksumRevBits(buf[:len(p)], p)
		u = crc32.Update(u, crc32.IEEETable, buf[:len(p)])
	}
	cksumRevPool.Put(buf)
	return bits.Reverse32(^u)
}

// cksumRevByte[b] is b with its bit order reversed.
var cksumRevByte = func() (t [256]byte) {
	for i := range t {
		t[i] = bits.Reverse8(uint8(i))
	}
	return t
}()

// cksumRevBlockBits stores in dst[i] the bit-reversal of src[i]. Working
// on fixed-size arrays lets the compiler drop all bounds checks; two words
// per iteration keep both in flight.
func cksumRevBlockBits(dst, src *[cksumRevBlock]byte) {
	for i := 0; i < len(src); i += 16 {
		x := cksumRev8(binary.LittleEndian.Uint64(src[i:]))
		y := cksumRev8(binary.LittleEndian.Uint64(src[i+8:]))
		binary.LittleEndian.PutUint64(dst[i:], x)
		binary.LittleEndian.PutUint64(dst[i+8:], y)
	}
}

// cksumRevBits stores in dst[i] the bit-reversal of src[i] for every i;
// len(dst) must be at least len(src).
func cksumRevBits(dst, src []byte) {
	dst = dst[:len(src)]
	i := 0
	for ; i <= len(src)-16; i += 16 {
		x := cksumRev8(binary.LittleEndian.Uint64(src[i:]))
		y := cksumRev8(binary.LittleEndian.Uint64(src[i+8:]))
		binary.LittleEndian.PutUint64(dst[i:], x)
		binary.LittleEndian.PutUint64(dst[i+8:], y)
	}
	for ; i < len(src); i++ {
		dst[i] = cksumRevByte[src[i]]
	}
}

// cksumHasRBIT is set where bits.Reverse64 and bits.ReverseBytes64 compile
// to single instructions (RBIT+REV on arm64, BITREVV+REVBV on loong64).
const cksumHasRBIT = runtime.GOARCH == "arm64" || runtime.GOARCH == "loong64"

// cksumRev8 reverses the bits within each byte of x, keeping byte order.
func cksumRev8(x uint64) uint64 {
	if cksumHasRBIT {
		return bits.ReverseBytes64(bits.Reverse64(x))
	}
	// The three in-byte swap steps of bits.Reverse64, without its final
	// byte swap (amd64 has no bit-reverse instruction).
	const (
		m1 = 0x5555555555555555
		m2 = 0x3333333333333333
		m4 = 0x0f0f0f0f0f0f0f0f
	)
	x = x>>1&m1 | x&m1<<1
	x = x>>2&m2 | x&m2<<2
	return x>>4&m4 | x&m4<<4
}

// ---------------------------------------------------------------------------
// Combination operators.

// cksumMat is a 32x32 GF(2) matrix: column i (m[i]) is the image of the
// register with only bit i set.
type cksumMat [32]uint32

// cksumShiftOps[k] multiplies a register by x^(8*2^k) mod P, i.e. feeds it
// 2^k zero bytes. 63 entries cover every positive int64 length.
var cksumShiftOps [63]cksumMat

func init() {
	// Rather than squaring matrices (zlib's gf2_matrix_square, 1024 steps
	// each), use that these operators commute with multiplication by x:
	// column i+1 is column i times x, and column 0 of operator k is the
	// polynomial x^(8*2^k) mod P, which is operator k-1 applied to column 0
	// of operator k-1. About 4000 cheap steps in all.
	c := uint32(1 << 8) // x^8 mod P
	for k := range cksumShiftOps {
		m := &cksumShiftOps[k]
		m[0] = c
		for i := 1; i < len(m); i++ {
			m[i] = cksumMulX(m[i-1])
		}
		c = cksumMatVec(m, c)
	}
}

// cksumMulX returns r*x mod P: one zero bit fed into the register.
func cksumMulX(r uint32) uint32 {
	return r<<1 ^ cksumPoly&-(r>>31)
}

// cksumMatVec returns m*v.
func cksumMatVec(m *cksumMat, v uint32) uint32 {
	var r uint32
	for i := 0; v != 0; i, v = i+1, v>>1 {
		r ^= m[i] & -(v & 1)
	}
	return r
}

// FileChecksums reads size bytes of r from the start, once, and returns
// their cksum value and SHA-256: what both ends compare for a file.
func FileChecksums(r io.ReaderAt, size int64) (uint32, [32]byte, error) {
	var fh FileHasher
	if err := fh.HashTo(r, size); err != nil {
		return 0, [32]byte{}, err
	}
	crc, sum := fh.Sum()
	return crc, sum, nil
}

// FileHasher computes FileChecksums of a file front to back, in as many
// steps as the caller likes: a server hashes the prefix of an upload that
// has arrived while the rest is still arriving, a client the prefix of a
// restore. The zero value is ready.
type FileHasher struct {
	ck  Cksum
	sha hash.Hash
	n   int64
}

// HashStep is how far the written prefix of a file that is arriving should
// run ahead of what a FileHasher has hashed before a background hasher
// starts on it: large reads, few goroutines.
const HashStep = 8 << 20

// hashBufs lends FileHasher its read buffers for the length of one HashTo:
// a server may be hashing hundreds of small uploads at once, and a buffer
// kept per upload would cost a MiB each.
var hashBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Len is how many bytes, from the start, have been hashed.
func (fh *FileHasher) Len() int64 { return fh.n }

// HashTo reads and hashes the bytes of r from Len() up to end. A file that
// ends before end is an error.
func (fh *FileHasher) HashTo(r io.ReaderAt, end int64) error {
	if end <= fh.n {
		return nil
	}
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	buf := *bp // large reads: this pass covers whole files
	for fh.n < end {
		p := buf[:min(int64(len(buf)), end-fh.n)]
		k, err := r.ReadAt(p, fh.n)
		fh.Write(p[:k])
		if k == len(p) {
			continue
		}
		if err == nil || err == io.EOF {
			return fmt.Errorf("proto: file ends after %d of %d bytes", fh.n, end)
		}
		return err
	}
	return nil
}

// Write hashes p, the bytes of the file that follow the Len() hashed so
// far, from memory: a receiver that holds them needs no read back.
func (fh *FileHasher) Write(p []byte) {
	if fh.sha == nil {
		fh.sha = sha256.New()
	}
	fh.ck.Write(p)
	fh.sha.Write(p)
	fh.n += int64(len(p))
}

// Sum returns the cksum and SHA-256 of the bytes hashed so far.
func (fh *FileHasher) Sum() (uint32, [32]byte) {
	if fh.sha == nil {
		fh.sha = sha256.New()
	}
	var sum [32]byte
	fh.sha.Sum(sum[:0])
	return fh.ck.Sum32(), sum
}

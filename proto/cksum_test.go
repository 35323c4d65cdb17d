package proto

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cksumRefBitwise is an obviously correct bit-at-a-time POSIX cksum, used
// as an independent reference for the table and hardware paths.
func cksumRefBitwise(p []byte) uint32 {
	var crc uint32
	feed := func(b byte) {
		crc ^= uint32(b) << 24
		for range 8 {
			if crc&0x80000000 != 0 {
				crc = crc<<1 ^ 0x04C11DB7
			} else {
				crc <<= 1
			}
		}
	}
	for _, b := range p {
		feed(b)
	}
	for n := uint64(len(p)); n != 0; n >>= 8 {
		feed(byte(n))
	}
	return ^crc
}

// cksumRandBytes returns n pseudo-random bytes from r.
func cksumRandBytes(r *rand.Rand, n int) []byte {
	p := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	return p[:n:n]
}

// cksumImpl is one way of advancing the raw register. f takes any input,
// but below minLen bytes it only hands it to the tables.
type cksumImpl struct {
	name   string
	f      func(crc uint32, p []byte) uint32
	minLen int
}

// cksumImpls returns every path this build can take besides the tables,
// which the tests treat as the reference: CRCUpdate, the bit-reversal
// path, the folding dispatcher and each assembly variant the CPU runs.
func cksumImpls() []cksumImpl {
	impls := []cksumImpl{{"CRCUpdate", CRCUpdate, 0}, {"rev", cksumUpdateRev, 0}}
	if cksumUseFold {
		impls = append(impls, cksumImpl{"fold", cksumUpdateFold, 16})
	}
	return append(impls, cksumArchImpls()...)
}

func TestCksumKnownVectors(t *testing.T) {
	// Expected values were produced with the coreutils 9.1 binary, e.g.
	// `printf '123456789' | /usr/bin/cksum` and
	// `head -c 1048576 /dev/zero | /usr/bin/cksum`.
	tests := []struct {
		name string
		in   []byte
		want uint32
	}{
		{"empty", nil, 4294967295},
		{"a", []byte("a"), 1220704766},
		{"123456789", []byte("123456789"), 930766865},
		{"1MiB zeros", make([]byte, 1<<20), 3018728591},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CksumBytes(tc.in); got != tc.want {
				t.Errorf("CksumBytes = %d, want %d", got, tc.want)
			}
			h := NewCksum()
			h.Write(tc.in)
			if got := h.Sum32(); got != tc.want {
				t.Errorf("Cksum.Sum32 = %d, want %d", got, tc.want)
			}
			if got := CksumFinish(cksumUpdateTable(0, tc.in), uint64(len(tc.in))); got != tc.want {
				t.Errorf("table path = %d, want %d", got, tc.want)
			}
			for _, impl := range cksumImpls() {
				if got := CksumFinish(impl.f(0, tc.in), uint64(len(tc.in))); got != tc.want {
					t.Errorf("%s path = %d, want %d", impl.name, got, tc.want)
				}
			}
			if len(tc.in) <= 4096 {
				if got := cksumRefBitwise(tc.in); got != tc.want {
					t.Errorf("bitwise reference = %d, want %d", got, tc.want)
				}
			}
		})
	}
}

func TestCksumCoreutils(t *testing.T) {
	const bin = "/usr/bin/cksum"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s not available: %v", bin, err)
	}
	sizes := []int{0, 1, 7, 8, 9, 63, 64, 65, 4095, 4096, 4097, 1<<20 - 1, 1 << 20, 1<<20 + 1}
	r := rand.New(rand.NewPCG(1, 2))
	for range 12 {
		sizes = append(sizes, r.IntN(3<<20+1))
	}
	dir := t.TempDir()
	for _, n := range sizes {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			data := cksumRandBytes(r, n)
			name := filepath.Join(dir, fmt.Sprintf("f%d", n))
			if err := os.WriteFile(name, data, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, name).Output()
			if err != nil {
				t.Fatalf("%s %s: %v", bin, name, err)
			}
			f := strings.Fields(string(out))
			if len(f) < 2 {
				t.Fatalf("unexpected cksum output %q", out)
			}
			want, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				t.Fatalf("parsing cksum output %q: %v", out, err)
			}
			if f[1] != strconv.Itoa(n) {
				t.Errorf("cksum reports size %s, want %d", f[1], n)
			}
			if got := CksumBytes(data); got != uint32(want) {
				t.Errorf("CksumBytes = %d, want %d (coreutils)", got, want)
			}
			if n <= 1<<16 { // larger inputs go through both paths in TestCksumPathsAgree
				if got := CksumFinish(cksumUpdateTable(0, data), uint64(n)); got != uint32(want) {
					t.Errorf("table path = %d, want %d (coreutils)", got, want)
				}
			}
			for _, impl := range cksumImpls() {
				if got := CksumFinish(impl.f(0, data), uint64(n)); got != uint32(want) {
					t.Errorf("%s path = %d, want %d (coreutils)", impl.name, got, want)
				}
			}
		})
	}
}

func TestCksumIncremental(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 15, 16, 17, 511, 512, 513, 100_000, 3*cksumRevBlock + 7} {
		data := cksumRandBytes(r, n)
		want := CksumBytes(data)
		for trial := range 20 {
			h := NewCksum()
			rest := data
			for len(rest) > 0 {
				k := r.IntN(len(rest) + 1)
				if trial%2 == 0 {
					k = min(k, r.IntN(70)) // many small writes
				}
				if nw, err := h.Write(rest[:k]); nw != k || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", k, nw, err, k)
				}
				rest = rest[k:]
			}
			if got := h.Sum32(); got != want {
				t.Errorf("n=%d trial=%d: incremental Sum32 = %d, want %d", n, trial, got, want)
			}
			if got := h.Len(); got != uint64(n) {
				t.Errorf("n=%d: Len = %d, want %d", n, got, n)
			}
		}
	}
}

func TestCksumHashMethods(t *testing.T) {
	h := NewCksum()
	if got := h.Size(); got != 4 {
		t.Errorf("Size = %d, want 4", got)
	}
	if got := h.BlockSize(); got != 1 {
		t.Errorf("BlockSize = %d, want 1", got)
	}
	if got, want := h.Sum32(), uint32(4294967295); got != want {
		t.Errorf("empty Sum32 = %d, want %d", got, want)
	}
	h.Write([]byte("1234"))
	if got := h.Len(); got != 4 {
		t.Errorf("Len = %d, want 4", got)
	}
	// Sum32 and Sum must not change the state.
	first := h.Sum32()
	if got := h.Sum32(); got != first {
		t.Errorf("second Sum32 = %d, want %d", got, first)
	}
	prefix := []byte("xy")
	sum := h.Sum(prefix)
	if want := binary.BigEndian.AppendUint32([]byte("xy"), first); !bytes.Equal(sum, want) {
		t.Errorf("Sum(%q) = %x, want %x", prefix, sum, want)
	}
	h.Write([]byte("56789"))
	if got, want := h.Sum32(), uint32(930766865); got != want {
		t.Errorf("Sum32 after Sum and more writes = %d, want %d", got, want)
	}
	if got, want := h.Sum(nil), []byte{0x37, 0x7a, 0x60, 0x11}; !bytes.Equal(got, want) {
		t.Errorf("Sum(nil) = %x, want %x", got, want)
	}
	h.Reset()
	if got := h.Len(); got != 0 {
		t.Errorf("Len after Reset = %d, want 0", got)
	}
	if got, want := h.Sum32(), uint32(4294967295); got != want {
		t.Errorf("Sum32 after Reset = %d, want %d", got, want)
	}
	h.Write([]byte("a"))
	if got, want := h.Sum32(), uint32(1220704766); got != want {
		t.Errorf("Sum32 after Reset+Write = %d, want %d", got, want)
	}
	var zero Cksum
	zero.Write([]byte("123456789"))
	if got, want := zero.Sum32(), uint32(930766865); got != want {
		t.Errorf("zero-value Cksum Sum32 = %d, want %d", got, want)
	}
}

func TestCksumFinish(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 255, 256, 257, 65535, 65536, 70000} {
		data := cksumRandBytes(r, n)
		if got, want := CksumFinish(CRCUpdate(0, data), uint64(n)), cksumRefBitwise(data); got != want {
			t.Errorf("n=%d: CksumFinish = %d, want %d", n, got, want)
		}
	}
	// Lengths needing all 8 bytes, checked against feeding the length
	// bytes by hand.
	for _, n := range []uint64{1 << 56, 1<<64 - 1, 0x0102030405060708} {
		crc := uint32(0x12345678)
		var lenBytes []byte
		for m := n; m != 0; m >>= 8 {
			lenBytes = append(lenBytes, byte(m))
		}
		if got, want := CksumFinish(crc, n), ^cksumUpdateTable(crc, lenBytes); got != want {
			t.Errorf("CksumFinish(%#x, %#x) = %d, want %d", crc, n, got, want)
		}
	}
}

func TestCRCCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for trial := range 300 {
		n := r.IntN(5000)
		switch {
		case trial == 0:
			n = 3<<20 + 17
		case trial%10 == 0:
			n = r.IntN(256 << 10)
		}
		data := cksumRandBytes(r, n)
		whole := CRCUpdate(0, data)
		pieces := 1 + r.IntN(10)
		cuts := make([]int, 0, pieces+1)
		cuts = append(cuts, 0)
		for range pieces - 1 {
			cuts = append(cuts, r.IntN(n+1))
		}
		cuts = append(cuts, n)
		// Sort the cut points; duplicates give empty pieces.
		for i := 1; i < len(cuts); i++ {
			for j := i; j > 0 && cuts[j] < cuts[j-1]; j-- {
				cuts[j], cuts[j-1] = cuts[j-1], cuts[j]
			}
		}
		var crc uint32
		for i := 1; i < len(cuts); i++ {
			piece := data[cuts[i-1]:cuts[i]]
			crc = CRCCombine(crc, CRCUpdate(0, piece), int64(len(piece)))
		}
		if crc != whole {
			t.Errorf("trial %d: n=%d cuts=%v: combined register = %#x, want %#x", trial, n, cuts, crc, whole)
		}
		if n < 5000 {
			if got, want := CksumFinish(crc, uint64(n)), cksumRefBitwise(data); got != want {
				t.Errorf("trial %d: n=%d: combined cksum = %d, want %d", trial, n, got, want)
			}
		}
	}
}

func TestCRCCombineEdges(t *testing.T) {
	tests := []struct {
		name       string
		crcA, crcB uint32
		lenB       int64
		want       uint32
	}{
		{"empty B", 0xdeadbeef, 0, 0, 0xdeadbeef},
		{"negative lenB", 0xdeadbeef, 0, -5, 0xdeadbeef},
		{"zero A", 0, 0x12345678, 1 << 40, 0x12345678},
		// Shifting by one zero byte is one table step.
		{"one byte", 0x80000001, 0, 1, 0x00000100 ^ cksumTab[0][0x80]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CRCCombine(tc.crcA, tc.crcB, tc.lenB); got != tc.want {
				t.Errorf("CRCCombine(%#x, %#x, %d) = %#x, want %#x", tc.crcA, tc.crcB, tc.lenB, got, tc.want)
			}
		})
	}
	// Large zero runs: combining A with lenB zero bytes must equal running
	// the register over those zeros.
	zeros := make([]byte, 1<<20+13)
	for _, crcA := range []uint32{1, 0x80000000, 0xffffffff, 0x5a5aa5a5} {
		if got, want := CRCCombine(crcA, 0, int64(len(zeros))), CRCUpdate(crcA, zeros); got != want {
			t.Errorf("CRCCombine(%#x, 0, %d) = %#x, want %#x", crcA, len(zeros), got, want)
		}
	}
	// The cksum polynomial is primitive, so x has multiplicative order
	// 2^32-1 modulo P and feeding any multiple of 2^32-1 zero bytes leaves
	// a register unchanged. This exercises the operators for high length
	// bits, up to the largest int64, without touching that much data.
	const period = 1<<32 - 1
	for _, crcA := range []uint32{1, 0x80000000, 0xdeadbeef} {
		for _, k := range []int64{1, 2, 3, 1000, 1 << 20, (1<<63 - 1 - 300) / period} {
			for _, rem := range []int64{0, 1, 300} {
				if got, want := CRCCombine(crcA, 0, k*period+rem), CRCCombine(crcA, 0, rem); got != want {
					t.Errorf("CRCCombine(%#x, 0, %d*(2^32-1)+%d) = %#x, want %#x", crcA, k, rem, got, want)
				}
			}
		}
	}
}

func TestCksumPathsAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	buf := cksumRandBytes(r, 3<<20+64)
	check := func(p []byte, init uint32) {
		t.Helper()
		table := cksumUpdateTable(init, p)
		rev := cksumUpdateRev(init, p)
		if table != rev {
			t.Errorf("len=%d init=%#x: table = %#x, bit-reversal = %#x", len(p), init, table, rev)
		}
		if got := CRCUpdate(init, p); got != table {
			t.Errorf("len=%d init=%#x: CRCUpdate = %#x, table = %#x", len(p), init, got, table)
		}
	}
	for n := 0; n <= 300; n++ {
		off := r.IntN(64) // exercise unaligned starts
		check(buf[off:off+n], 0)
		check(buf[off:off+n], r.Uint32())
	}
	for _, n := range []int{511, 512, 513, cksumRevBlock - 1, cksumRevBlock, cksumRevBlock + 1,
		5*cksumRevBlock + 31, 1 << 20, 1<<20 + 3, 3 << 20} {
		off := r.IntN(64)
		check(buf[off:off+n], r.Uint32())
	}
	// Every byte value in every position of the 32-byte reversal loop.
	all := make([]byte, 256*33)
	for i := range all {
		all[i] = byte(i)
	}
	check(all, 0)
}

// TestCksumImplsAgree checks every path against the tables over the lengths,
// alignments and registers where the folding code changes course: below and
// above its 64-byte threshold, each tail length after the 128-byte main loop,
// each start address modulo a cache line, and the 256 KiB pieces
// cksumUpdateFold hands the assembly.
func TestCksumImplsAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	buf := cksumRandBytes(r, 4<<20+64)
	type input struct {
		off, n int
		init   uint32
	}
	var inputs []input
	for n := 0; n <= 600; n++ {
		inputs = append(inputs, input{r.IntN(64), n, 0}, input{r.IntN(64), n, r.Uint32()})
	}
	for off := range 64 {
		for _, n := range []int{16, 63, 64, 127, 128, 129, 255, 256, 1000, 4096 + 15} {
			inputs = append(inputs, input{off, n, r.Uint32()})
		}
	}
	for _, n := range []int{1<<18 - 1, 1 << 18, 1<<18 + 1, 1<<18 + 16, 1<<18 + 127, 1<<18 + 128, 1<<19 + 15} {
		inputs = append(inputs, input{r.IntN(64), n, r.Uint32()})
	}
	for range 10 {
		inputs = append(inputs, input{r.IntN(64), r.IntN(4 << 20), r.Uint32()})
	}
	for _, init := range []uint32{1, 0x80000000, 0xffffffff} {
		inputs = append(inputs, input{0, 16, init}, input{1, 128, init}, input{2, 4096, init})
	}
	impls := cksumImpls()
	for _, in := range inputs {
		p := buf[in.off : in.off+in.n]
		want := cksumUpdateTable(in.init, p)
		for _, impl := range impls {
			if got := impl.f(in.init, p); got != want {
				t.Errorf("%s: off=%d len=%d init=%#x: register = %#x, table = %#x",
					impl.name, in.off, in.n, in.init, got, want)
			}
		}
	}
	// Constant inputs: all zeros and all ones, from a zero register, must
	// not be special to any path.
	for _, fill := range []byte{0x00, 0xff} {
		p := bytes.Repeat([]byte{fill}, 70_000)
		want := cksumUpdateTable(0, p)
		for _, impl := range impls {
			if got := impl.f(0, p); got != want {
				t.Errorf("%s: %d bytes of %#x: register = %#x, table = %#x", impl.name, len(p), fill, got, want)
			}
		}
	}
}

// FuzzCRCUpdate compares every path with the tables on data starting off
// bytes into the input, from register init.
func FuzzCRCUpdate(f *testing.F) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{0, 15, 16, 17, 63, 64, 127, 128, 129, 300, 600, 1000} {
		f.Add(cksumRandBytes(r, n), uint32(0), uint8(0))
		f.Add(cksumRandBytes(r, n+5), r.Uint32(), uint8(n%64))
	}
	f.Add(bytes.Repeat([]byte{0xff}, 512), uint32(0xffffffff), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, init uint32, off uint8) {
		p := data[min(int(off%64), len(data)):]
		want := cksumUpdateTable(init, p)
		for _, impl := range cksumImpls() {
			if got := impl.f(init, p); got != want {
				t.Errorf("%s: len=%d init=%#x: register = %#x, table = %#x", impl.name, len(p), init, got, want)
			}
		}
	})
}

func TestCksumRevBits(t *testing.T) {
	want := func(b byte) byte {
		var r byte
		for j := range 8 {
			r |= (b >> j & 1) << (7 - j)
		}
		return r
	}
	var src, dst [cksumRevBlock]byte
	for i := range src {
		src[i] = byte(i*7 + i>>8)
	}
	cksumRevBlockBits(&dst, &src)
	for i, b := range src {
		if w := want(b); dst[i] != w {
			t.Fatalf("cksumRevBlockBits: byte %d (%#08b) = %#08b, want %#08b", i, b, dst[i], w)
		}
	}
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 256 + 37} {
		d := make([]byte, n+1)
		d[n] = 0xAA // must stay untouched
		cksumRevBits(d, src[:n])
		for i, b := range src[:n] {
			if w := want(b); d[i] != w {
				t.Fatalf("cksumRevBits(n=%d): byte %d (%#08b) = %#08b, want %#08b", n, i, b, d[i], w)
			}
		}
		if d[n] != 0xAA {
			t.Errorf("cksumRevBits(n=%d) wrote past the input length", n)
		}
	}
}

func TestCksumShiftOps(t *testing.T) {
	// Rebuild the operators the zlib way: the one-zero-bit matrix, squared
	// three times for one zero byte, then squared again for each k.
	square := func(m *cksumMat) (sq cksumMat) {
		for i := range sq {
			sq[i] = cksumMatVec(m, m[i])
		}
		return sq
	}
	var m cksumMat
	for i := range 31 {
		m[i] = 1 << (i + 1)
	}
	m[31] = 0x04C11DB7
	for range 3 {
		m = square(&m)
	}
	for k := range cksumShiftOps {
		if cksumShiftOps[k] != m {
			t.Fatalf("cksumShiftOps[%d] = %x, want %x", k, cksumShiftOps[k], m)
		}
		m = square(&m)
	}
}

func TestCksumNoAllocs(t *testing.T) {
	data := make([]byte, 3*cksumRevBlock+100)
	h := NewCksum()
	tests := []struct {
		name string
		f    func()
	}{
		{"Write large", func() { h.Write(data) }},
		{"Write 64B", func() { h.Write(data[:64]) }},
		{"CksumBytes large", func() { CksumBytes(data) }},
		{"CRCCombine", func() { CRCCombine(1, 2, 1<<40+12345) }},
	}
	for _, tc := range tests {
		tc.f() // warm the buffer pool
		// Under the race detector sync.Pool drops some items on purpose;
		// AllocsPerRun truncates the average, so that stays below 1.
		if got := testing.AllocsPerRun(50, tc.f); got != 0 {
			t.Errorf("%s: %v allocs per call, want 0", tc.name, got)
		}
	}
}

func FuzzCksum(f *testing.F) {
	f.Add([]byte(""), uint(0))
	f.Add([]byte("a"), uint(1))
	f.Add([]byte("123456789"), uint(4))
	f.Add(bytes.Repeat([]byte{0xff}, 600), uint(300))
	f.Add(bytes.Repeat([]byte("qbackup!"), 100), uint(513))
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		k := int(split % uint(len(data)+1))
		a, b := data[:k], data[k:]
		want := CksumBytes(data)

		h := NewCksum()
		h.Write(a)
		h.Write(b)
		if got := h.Sum32(); got != want {
			t.Errorf("incremental = %d, one-shot = %d", got, want)
		}
		if got := h.Len(); got != uint64(len(data)) {
			t.Errorf("Len = %d, want %d", got, len(data))
		}
		if got := CksumFinish(cksumUpdateTable(0, data), uint64(len(data))); got != want {
			t.Errorf("table path = %d, one-shot = %d", got, want)
		}
		if got := CksumFinish(cksumUpdateRev(0, data), uint64(len(data))); got != want {
			t.Errorf("bit-reversal path = %d, one-shot = %d", got, want)
		}
		combined := CRCCombine(CRCUpdate(0, a), CRCUpdate(0, b), int64(len(b)))
		if got := CksumFinish(combined, uint64(len(data))); got != want {
			t.Errorf("combine at %d = %d, one-shot = %d", k, got, want)
		}
		if len(data) <= 1<<16 {
			if ref := cksumRefBitwise(data); ref != want {
				t.Errorf("one-shot = %d, bitwise reference = %d", want, ref)
			}
		}
	})
}

func TestFileChecksums(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 1 << 20, 3<<20 + 17} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i*31 + i>>9)
		}
		crc, sha, err := FileChecksums(bytes.NewReader(data), int64(n))
		if err != nil {
			t.Fatalf("FileChecksums(%d bytes) error = %v", n, err)
		}
		if want := CksumBytes(data); crc != want {
			t.Errorf("FileChecksums(%d bytes) crc = %d, want %d", n, crc, want)
		}
		if want := sha256.Sum256(data); sha != want {
			t.Errorf("FileChecksums(%d bytes) sha256 = %x, want %x", n, sha, want)
		}
	}
	if _, _, err := FileChecksums(bytes.NewReader(make([]byte, 10)), 11); err == nil {
		t.Errorf("FileChecksums past the end: nil error, want one")
	}
}

// hasherData returns 3 MiB and a bit of bytes (byte i is i*mul + i>>shift)
// and their checksums in one pass.
func hasherData(t *testing.T, mul, shift int) ([]byte, uint32, [32]byte) {
	t.Helper()
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(i*mul + i>>shift)
	}
	crc, sha, err := FileChecksums(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	return data, crc, sha
}

// TestFileHasherSteps: hashing a file in steps of any size gives what one
// pass gives, and a file shorter than asked is an error.
func TestFileHasherSteps(t *testing.T) {
	data, wantCRC, wantSHA := hasherData(t, 7, 11)
	for _, step := range []int64{1, 4095, 1 << 20, 1<<20 + 1, 5 << 20} {
		var fh FileHasher
		for end := int64(0); end < int64(len(data)); {
			end = min(end+step, int64(len(data)))
			if err := fh.HashTo(bytes.NewReader(data), end); err != nil {
				t.Fatal(err)
			}
			if step == 1 && end > 10000 { // bytes one at a time: enough
				if err := fh.HashTo(bytes.NewReader(data), int64(len(data))); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		fh.HashTo(bytes.NewReader(data), 100) // behind: nothing to do
		crc, sha := fh.Sum()
		if crc != wantCRC || sha != wantSHA || fh.Len() != int64(len(data)) {
			t.Errorf("step %d: sums differ from one pass", step)
		}
	}
	var fh FileHasher
	if err := fh.HashTo(bytes.NewReader(data[:100]), 200); err == nil {
		t.Error("hashing past the end of the file succeeded")
	}
}

// TestFileHasherWrite: bytes hashed from memory and bytes read back mix in
// any order and give what one pass gives.
func TestFileHasherWrite(t *testing.T) {
	data, wantCRC, wantSHA := hasherData(t, 13, 9)
	tests := []struct {
		name   string
		pieces []int64 // lengths; even pieces from memory, odd ones read back
	}{
		{"all from memory", []int64{int64(len(data))}},
		{"memory then file", []int64{1 << 20, int64(len(data)) - 1<<20}},
		{"file first", []int64{0, 1<<20 + 1, 4095, 2 << 20}},
		{"alternating odd sizes", []int64{1, 2, 3, 1 << 20, 77, 1<<20 - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fh FileHasher
			for i, n := range tt.pieces {
				n = min(n, int64(len(data))-fh.Len())
				if i%2 == 0 {
					fh.Write(data[fh.Len() : fh.Len()+n])
				} else if err := fh.HashTo(bytes.NewReader(data), fh.Len()+n); err != nil {
					t.Fatal(err)
				}
			}
			fh.Write(data[fh.Len():]) // the rest, if any
			crc, sha := fh.Sum()
			if crc != wantCRC || sha != wantSHA || fh.Len() != int64(len(data)) {
				t.Errorf("sums differ from one pass (len %d)", fh.Len())
			}
		})
	}
}

package proto

import (
	"fmt"
	"slices"
	"sort"
)

// RangeSet is a set of disjoint byte ranges, kept sorted and merged. Both
// ends use it to track which bytes of a transfer have arrived. It is not
// safe for concurrent use.
type RangeSet struct {
	r     []Range
	total uint64
}

// Add inserts [off, off+n). It fails, changing nothing, if n is 0 or the
// range overlaps one already present: every byte of a transfer arrives once.
func (s *RangeSet) Add(off, n uint64) error {
	if n == 0 || off > MaxFileSize || n > MaxFileSize-off {
		return fmt.Errorf("proto: range [%d,+%d) is empty or out of bounds", off, n)
	}
	end := off + n
	// i is the first range that ends after off.
	i := sort.Search(len(s.r), func(i int) bool { return s.r[i].Off+s.r[i].Len > off })
	if i < len(s.r) && s.r[i].Off < end {
		return fmt.Errorf("proto: range [%d,+%d) overlaps [%d,+%d) already received", off, n, s.r[i].Off, s.r[i].Len)
	}
	s.total += n
	mergeLeft := i > 0 && s.r[i-1].Off+s.r[i-1].Len == off
	mergeRight := i < len(s.r) && s.r[i].Off == end
	switch {
	case mergeLeft && mergeRight:
		s.r[i-1].Len += n + s.r[i].Len
		s.r = append(s.r[:i], s.r[i+1:]...)
	case mergeLeft:
		s.r[i-1].Len += n
	case mergeRight:
		s.r[i].Off = off
		s.r[i].Len += n
	default:
		s.r = append(s.r, Range{})
		copy(s.r[i+1:], s.r[i:])
		s.r[i] = Range{Off: off, Len: n}
	}
	return nil
}

// Clone returns a copy of s that shares nothing with it. (A RangeSet
// copied by value shares its ranges: adding to one changes the other.)
func (s *RangeSet) Clone() RangeSet {
	return RangeSet{r: slices.Clone(s.r), total: s.total}
}

// Total is the number of bytes in the set.
func (s *RangeSet) Total() uint64 { return s.total }

// Ranges returns a copy of the ranges in ascending order.
func (s *RangeSet) Ranges() []Range { return append([]Range(nil), s.r...) }

// Covers reports whether the set holds every byte of [0, size).
func (s *RangeSet) Covers(size uint64) bool {
	return size == 0 || (len(s.r) > 0 && s.r[0].Off == 0 && s.r[0].Len >= size)
}

// Prefix is the length of the run of bytes in the set that starts at 0.
func (s *RangeSet) Prefix() uint64 {
	if len(s.r) == 0 || s.r[0].Off != 0 {
		return 0
	}
	return s.r[0].Len
}

// Missing returns the ranges of [0, size) not in the set, ascending.
func (s *RangeSet) Missing(size uint64) []Range {
	var out []Range
	var pos uint64
	for _, r := range s.r {
		if r.Off >= size {
			break
		}
		if r.Off > pos {
			out = append(out, Range{Off: pos, Len: r.Off - pos})
		}
		pos = r.Off + r.Len
	}
	if pos < size {
		out = append(out, Range{Off: pos, Len: size - pos})
	}
	return out
}

// AppendRanges appends the ranges of s: a uint32 count, then each range as
// offset and length, uint64 each. Servers keep it with a partial upload.
func (s *RangeSet) AppendRanges(b []byte) []byte {
	b = appendU32(b, uint32(len(s.r)))
	for _, r := range s.r {
		b = appendU64(b, r.Off)
		b = appendU64(b, r.Len)
	}
	return b
}

// ParseRangeSet decodes what AppendRanges wrote, checking that the ranges
// are non-empty, ascending, disjoint and within size.
func ParseRangeSet(b []byte, size uint64) (*RangeSet, error) {
	d := &decoder{b: b, what: "ranges"}
	n := d.u32("count")
	if d.err == nil && uint64(len(d.b)) != uint64(n)*16 {
		d.fail(errShort, "ranges")
	}
	s := &RangeSet{}
	for i := uint32(0); d.err == nil && i < n; i++ {
		off, l := d.u64("offset"), d.u64("length")
		if d.err != nil {
			break
		}
		if l == 0 || off > size || l > size-off {
			d.fail(fmt.Errorf("range [%d,+%d) empty or beyond size %d", off, l, size), "ranges")
			break
		}
		if len(s.r) > 0 && off <= s.r[len(s.r)-1].Off+s.r[len(s.r)-1].Len {
			// AppendRanges writes merged sets, so touching ranges are
			// as wrong as overlapping ones.
			d.fail(fmt.Errorf("range [%d,+%d) out of order or not merged", off, l), "ranges")
			break
		}
		if err := s.Add(off, l); err != nil {
			d.fail(err, "ranges")
		}
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return s, nil
}

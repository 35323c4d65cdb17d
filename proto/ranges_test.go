package proto_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

type addOp struct {
	off, n  uint64
	wantErr bool
}

func TestRangeSetAdd(t *testing.T) {
	const max = proto.MaxFileSize
	tests := []struct {
		name  string
		ops   []addOp
		want  []proto.Range
		total uint64
	}{
		{"none", nil, nil, 0},
		{"single", []addOp{{10, 5, false}}, []proto.Range{{10, 5}}, 5},
		{"inOrderAdjacent", []addOp{{0, 10, false}, {10, 10, false}, {20, 10, false}}, []proto.Range{{0, 30}}, 30},
		{"inOrderGaps", []addOp{{0, 10, false}, {20, 10, false}, {40, 10, false}}, []proto.Range{{0, 10}, {20, 10}, {40, 10}}, 30},
		{"reverseAdjacent", []addOp{{20, 10, false}, {10, 10, false}, {0, 10, false}}, []proto.Range{{0, 30}}, 30},
		{"reverseGaps", []addOp{{40, 10, false}, {20, 10, false}, {0, 10, false}}, []proto.Range{{0, 10}, {20, 10}, {40, 10}}, 30},
		{"interleaved", []addOp{{0, 10, false}, {40, 10, false}, {20, 10, false}, {10, 10, false}, {30, 10, false}}, []proto.Range{{0, 50}}, 50},
		{"mergeBothSides", []addOp{{0, 10, false}, {20, 10, false}, {10, 10, false}}, []proto.Range{{0, 30}}, 30},
		{"mergeBothSidesMiddle", []addOp{{0, 5, false}, {10, 5, false}, {20, 5, false}, {30, 5, false}, {15, 5, false}}, []proto.Range{{0, 5}, {10, 15}, {30, 5}}, 25},
		{"mergeLeftOnly", []addOp{{0, 10, false}, {20, 10, false}, {10, 5, false}}, []proto.Range{{0, 15}, {20, 10}}, 25},
		{"mergeRightOnly", []addOp{{0, 10, false}, {20, 10, false}, {15, 5, false}}, []proto.Range{{0, 10}, {15, 15}}, 25},
		{"insertFirst", []addOp{{10, 5, false}, {20, 5, false}, {0, 5, false}}, []proto.Range{{0, 5}, {10, 5}, {20, 5}}, 15},
		{"insertMiddle", []addOp{{0, 5, false}, {20, 5, false}, {10, 5, false}}, []proto.Range{{0, 5}, {10, 5}, {20, 5}}, 15},
		{"singleBytes", []addOp{{2, 1, false}, {0, 1, false}, {1, 1, false}}, []proto.Range{{0, 3}}, 3},
		{"duplicate", []addOp{{10, 10, false}, {10, 10, true}}, []proto.Range{{10, 10}}, 10},
		{"overlapLeft", []addOp{{10, 10, false}, {5, 6, true}}, []proto.Range{{10, 10}}, 10},
		{"overlapRight", []addOp{{10, 10, false}, {19, 5, true}}, []proto.Range{{10, 10}}, 10},
		{"contained", []addOp{{10, 10, false}, {12, 2, true}}, []proto.Range{{10, 10}}, 10},
		{"containing", []addOp{{10, 10, false}, {5, 20, true}}, []proto.Range{{10, 10}}, 10},
		{"lastByte", []addOp{{10, 10, false}, {19, 1, true}}, []proto.Range{{10, 10}}, 10},
		{"firstByte", []addOp{{10, 10, false}, {10, 1, true}}, []proto.Range{{10, 10}}, 10},
		{"spanningTwo", []addOp{{0, 10, false}, {20, 10, false}, {5, 20, true}}, []proto.Range{{0, 10}, {20, 10}}, 20},
		{"fillsGapPlusOne", []addOp{{0, 10, false}, {20, 10, false}, {10, 11, true}}, []proto.Range{{0, 10}, {20, 10}}, 20},
		{"overlapMerged", []addOp{{0, 10, false}, {10, 10, false}, {9, 2, true}}, []proto.Range{{0, 20}}, 20},
		{"zeroLength", []addOp{{0, 0, true}}, nil, 0},
		{"zeroLengthInside", []addOp{{0, 10, false}, {5, 0, true}}, []proto.Range{{0, 10}}, 10},
		{"zeroLengthAtEnd", []addOp{{0, 10, false}, {10, 0, true}}, []proto.Range{{0, 10}}, 10},
		{"zeroLengthInGap", []addOp{{0, 10, false}, {20, 10, false}, {15, 0, true}}, []proto.Range{{0, 10}, {20, 10}}, 20},
		{"wholeFile", []addOp{{0, max, false}, {max - 1, 1, true}}, []proto.Range{{0, max}}, max},
		{"atBound", []addOp{{max - 1, 1, false}}, []proto.Range{{max - 1, 1}}, 1},
		{"offAtMax", []addOp{{max, 1, true}}, nil, 0},
		{"endPastMax", []addOp{{max - 1, 2, true}}, nil, 0},
		{"lenPastMax", []addOp{{0, max + 1, true}}, nil, 0},
		{"offOverflow", []addOp{{math.MaxUint64, 1, true}}, nil, 0},
		{"lenOverflow", []addOp{{1, math.MaxUint64, true}}, nil, 0},
		{"wrapAround", []addOp{{0, 10, false}, {math.MaxUint64 - 4, 10, true}}, []proto.Range{{0, 10}}, 10},
		{"rejectedThenAccepted", []addOp{{0, 10, false}, {5, 10, true}, {10, 10, false}}, []proto.Range{{0, 20}}, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s proto.RangeSet
			for i, op := range tt.ops {
				before, beforeTotal := s.Ranges(), s.Total()
				err := s.Add(op.off, op.n)
				if gotErr := err != nil; gotErr != op.wantErr {
					t.Fatalf("op %d: Add(%d, %d) error = %v, want error %v", i, op.off, op.n, err, op.wantErr)
				}
				if err != nil {
					if got := s.Ranges(); !reflect.DeepEqual(got, before) {
						t.Errorf("op %d: after rejected Add(%d, %d), Ranges = %v, want unchanged %v", i, op.off, op.n, got, before)
					}
					if got := s.Total(); got != beforeTotal {
						t.Errorf("op %d: after rejected Add(%d, %d), Total = %d, want unchanged %d", i, op.off, op.n, got, beforeTotal)
					}
				}
			}
			if got := s.Ranges(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Ranges = %v, want %v", got, tt.want)
			}
			if got := s.Total(); got != tt.total {
				t.Errorf("Total = %d, want %d", got, tt.total)
			}
		})
	}
}

func TestRangeSetCoversMissing(t *testing.T) {
	tests := []struct {
		name        string
		adds        []proto.Range
		size        uint64
		wantCovers  bool
		wantMissing []proto.Range
	}{
		{"emptySetEmptyFile", nil, 0, true, nil},
		{"emptySet", nil, 100, false, []proto.Range{{0, 100}}},
		{"emptyFile", []proto.Range{{0, 10}}, 0, true, nil},
		{"exact", []proto.Range{{0, 100}}, 100, true, nil},
		{"exactMerged", []proto.Range{{50, 50}, {0, 50}}, 100, true, nil},
		{"beyondSize", []proto.Range{{0, 150}}, 100, true, nil},
		{"missingTail", []proto.Range{{0, 60}}, 100, false, []proto.Range{{60, 40}}},
		{"missingHead", []proto.Range{{40, 60}}, 100, false, []proto.Range{{0, 40}}},
		{"missingMiddle", []proto.Range{{0, 30}, {70, 30}}, 100, false, []proto.Range{{30, 40}}},
		{"missingSeveral", []proto.Range{{10, 10}, {30, 10}, {50, 10}}, 70, false, []proto.Range{{0, 10}, {20, 10}, {40, 10}, {60, 10}}},
		{"rangeStraddlesSize", []proto.Range{{0, 10}, {90, 20}}, 100, false, []proto.Range{{10, 80}}},
		{"rangeAfterSize", []proto.Range{{0, 10}, {200, 10}}, 100, false, []proto.Range{{10, 90}}},
		{"onlyRangeAfterSize", []proto.Range{{200, 10}}, 100, false, []proto.Range{{0, 100}}},
		{"rangeAtSize", []proto.Range{{100, 10}}, 100, false, []proto.Range{{0, 100}}},
		{"oneByteMissing", []proto.Range{{0, 99}}, 100, false, []proto.Range{{99, 1}}},
		{"firstByteMissing", []proto.Range{{1, 99}}, 100, false, []proto.Range{{0, 1}}},
		{"maxFileSize", []proto.Range{{0, proto.MaxFileSize}}, proto.MaxFileSize, true, nil},
		{"maxFileSizeLastByte", []proto.Range{{0, proto.MaxFileSize - 1}}, proto.MaxFileSize, false, []proto.Range{{proto.MaxFileSize - 1, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s proto.RangeSet
			for _, r := range tt.adds {
				if err := s.Add(r.Off, r.Len); err != nil {
					t.Fatalf("Add(%d, %d) error = %v, want nil", r.Off, r.Len, err)
				}
			}
			if got := s.Covers(tt.size); got != tt.wantCovers {
				t.Errorf("Covers(%d) = %v, want %v", tt.size, got, tt.wantCovers)
			}
			if got := s.Missing(tt.size); !reflect.DeepEqual(got, tt.wantMissing) {
				t.Errorf("Missing(%d) = %v, want %v", tt.size, got, tt.wantMissing)
			}
		})
	}
}

// TestRangeSetCoversRangesBeyondSize exposes a Covers bug.
//
// Regression: Covers agrees with Missing when more ranges lie past size.
func TestRangeSetCoversRangesBeyondSize(t *testing.T) {
	tests := []struct {
		adds []proto.Range
		size uint64
	}{
		{[]proto.Range{{0, 10}, {20, 10}}, 10},
		{[]proto.Range{{0, 10}, {11, 10}}, 10},
		{[]proto.Range{{0, 100}, {200, 1}}, 50},
	}
	for _, tt := range tests {
		var s proto.RangeSet
		for _, r := range tt.adds {
			if err := s.Add(r.Off, r.Len); err != nil {
				t.Fatalf("Add(%d, %d) error = %v, want nil", r.Off, r.Len, err)
			}
		}
		if got := s.Missing(tt.size); len(got) != 0 {
			t.Errorf("%v: Missing(%d) = %v, want none", tt.adds, tt.size, got)
		}
		if got := s.Covers(tt.size); !got {
			t.Errorf("%v: Covers(%d) = %v, want true (Missing(%d) is empty)", tt.adds, tt.size, got, tt.size)
		}
	}
}

func TestRangeSetZero(t *testing.T) {
	var s proto.RangeSet
	if got := s.Total(); got != 0 {
		t.Errorf("Total = %d, want 0", got)
	}
	if got := s.Ranges(); len(got) != 0 {
		t.Errorf("Ranges = %v, want none", got)
	}
	if got := s.Covers(0); !got {
		t.Errorf("Covers(0) = %v, want true", got)
	}
	if got := s.Covers(1); got {
		t.Errorf("Covers(1) = %v, want false", got)
	}
	if got, want := s.Missing(10), []proto.Range{{0, 10}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Missing(10) = %v, want %v", got, want)
	}
	if got := s.Missing(0); got != nil {
		t.Errorf("Missing(0) = %v, want nil", got)
	}
}

func TestRangeSetRangesIsACopy(t *testing.T) {
	var s proto.RangeSet
	if err := s.Add(0, 10); err != nil {
		t.Fatalf("Add error = %v, want nil", err)
	}
	if err := s.Add(20, 10); err != nil {
		t.Fatalf("Add error = %v, want nil", err)
	}
	r := s.Ranges()
	r[0] = proto.Range{Off: 5, Len: 1}
	if got, want := s.Ranges(), []proto.Range{{0, 10}, {20, 10}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Ranges after modifying a returned slice = %v, want %v", got, want)
	}
	// Adds after the copy was taken do not write through it either.
	r = s.Ranges()
	if err := s.Add(10, 10); err != nil {
		t.Fatalf("Add error = %v, want nil", err)
	}
	if got, want := r, []proto.Range{{0, 10}, {20, 10}}; !reflect.DeepEqual(got, want) {
		t.Errorf("earlier Ranges result after Add = %v, want %v", got, want)
	}
}

func TestRangeSetEncoding(t *testing.T) {
	var s proto.RangeSet
	for _, r := range []proto.Range{{0, 10}, {20, 5}, {100, 1}} {
		if err := s.Add(r.Off, r.Len); err != nil {
			t.Fatal(err)
		}
	}
	b := s.AppendRanges(nil)
	got, err := proto.ParseRangeSet(b, 101)
	if err != nil {
		t.Fatalf("ParseRangeSet = %v", err)
	}
	if !reflect.DeepEqual(got.Ranges(), s.Ranges()) || got.Total() != s.Total() {
		t.Errorf("ParseRangeSet = %v (total %d), want %v (total %d)", got.Ranges(), got.Total(), s.Ranges(), s.Total())
	}
	empty, err := proto.ParseRangeSet((&proto.RangeSet{}).AppendRanges(nil), 0)
	if err != nil || empty.Total() != 0 {
		t.Errorf("empty set: %v, %v", empty, err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		size uint64
	}{
		{"beyond size", b, 100},
		{"truncated", b[:len(b)-1], 101},
		{"trailing", append(append([]byte{}, b...), 0), 101},
		{"short count", []byte{0, 0}, 101},
		{"count too big", []byte{0, 0, 0, 9}, 101},
		{"empty range", (&wireRanges{}).add(5, 0).b, 101},
		{"unordered", (&wireRanges{}).add(20, 5).add(0, 10).b, 101},
		{"overlapping", (&wireRanges{}).add(0, 10).add(5, 10).b, 101},
		{"touching", (&wireRanges{}).add(0, 10).add(10, 10).b, 101},
	} {
		if _, err := proto.ParseRangeSet(tc.b, tc.size); err == nil {
			t.Errorf("ParseRangeSet(%s) = nil error, want one", tc.name)
		}
	}
}

// wireRanges builds an AppendRanges encoding by hand.
type wireRanges struct {
	n int
	b []byte
}

func (w *wireRanges) add(off, l uint64) *wireRanges {
	w.n++
	body := w.b
	if len(body) >= 4 {
		body = body[4:]
	}
	body = binary.BigEndian.AppendUint64(body, off)
	body = binary.BigEndian.AppendUint64(body, l)
	w.b = append(binary.BigEndian.AppendUint32(nil, uint32(w.n)), body...)
	return w
}

func FuzzParseRangeSet(f *testing.F) {
	var s proto.RangeSet
	s.Add(0, 10)
	s.Add(20, 5)
	f.Add(s.AppendRanges(nil), uint64(100))
	f.Add([]byte{0, 0, 0, 0}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, size uint64) {
		size %= proto.MaxFileSize
		got, err := proto.ParseRangeSet(b, size)
		if err != nil {
			return
		}
		if again := got.AppendRanges(nil); !bytes.Equal(again, b) {
			t.Errorf("ParseRangeSet then AppendRanges = %x, want %x", again, b)
		}
		if len(got.Missing(size)) == 0 && !got.Covers(size) {
			t.Errorf("Missing is empty but Covers is false")
		}
	})
}

func TestRangeSetPrefix(t *testing.T) {
	tests := []struct {
		name string
		add  []proto.Range
		want uint64
	}{
		{"empty", nil, 0},
		{"not from zero", []proto.Range{{10, 5}}, 0},
		{"from zero", []proto.Range{{0, 5}}, 5},
		{"merged", []proto.Range{{5, 5}, {0, 5}, {20, 1}}, 10},
		{"gap", []proto.Range{{0, 5}, {6, 5}}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s proto.RangeSet
			for _, r := range tt.add {
				if err := s.Add(r.Off, r.Len); err != nil {
					t.Fatal(err)
				}
			}
			if got := s.Prefix(); got != tt.want {
				t.Errorf("Prefix = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestRangeSetClone: adding to a clone, or to the original, leaves the
// other as it was, whatever room the ranges' slice has.
func TestRangeSetClone(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5} {
		var s proto.RangeSet
		for i := range n {
			if err := s.Add(uint64(i)*100, 10); err != nil {
				t.Fatal(err)
			}
		}
		before := fmt.Sprint(s.Ranges(), s.Total())
		c := s.Clone()
		for _, off := range []uint64{50, 10, 1000} { // between, touching, after
			if err := c.Add(off, 5); err != nil {
				t.Fatal(err)
			}
		}
		if got := fmt.Sprint(s.Ranges(), s.Total()); got != before {
			t.Errorf("%d ranges: the original changed to %s when its clone grew, was %s", n, got, before)
		}
		if err := s.Add(500, 10); err != nil {
			t.Fatal(err)
		}
		if c.Total() != uint64(n)*10+15 || len(c.Ranges()) == 0 {
			t.Errorf("%d ranges: clone %v, total %d after the original grew", n, c.Ranges(), c.Total())
		}
		for _, r := range c.Ranges() {
			if r.Off == 500 {
				t.Errorf("%d ranges: the clone changed when the original grew: %v", n, c.Ranges())
			}
		}
	}
}

package quiccli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/qbackup/qbackup/proto"
)

// Rate is a transfer rate in bytes per second, as --limit takes it: a
// number and a unit of bits (bit, kbit, mbit, gbit: powers of 1000, any
// case) or of bytes (B, kB, MB, GB, or KiB, MiB, GiB, with an upper-case
// B), with or without "/s". 0 alone is no limit.
type Rate float64

var rateUnits = []struct {
	suffix string
	fold   bool // case does not matter
	mult   float64
}{
	// Longest first, so that "kbit" is not read as "bit".
	{"gbit", true, 1e9 / 8},
	{"mbit", true, 1e6 / 8},
	{"kbit", true, 1e3 / 8},
	{"bit", true, 1.0 / 8},
	{"GiB", false, 1 << 30},
	{"MiB", false, 1 << 20},
	{"KiB", false, 1 << 10},
	{"GB", false, 1e9},
	{"MB", false, 1e6},
	{"kB", false, 1e3},
	{"KB", false, 1e3},
	{"B", false, 1},
}

// ParseRate reads a rate; see Rate.
func ParseRate(s string) (Rate, error) {
	in := strings.TrimSpace(s)
	if in == "0" {
		return 0, nil
	}
	t := strings.TrimSuffix(in, "/s")
	for _, u := range rateUnits {
		var num string
		switch {
		case u.fold && len(t) >= len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix):
			num = t[:len(t)-len(u.suffix)]
		case !u.fold && strings.HasSuffix(t, u.suffix):
			num = t[:len(t)-len(u.suffix)]
		default:
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v < 0 || v != v || v > 1e15 {
			return 0, fmt.Errorf("%q is not a rate: a number and a unit, such as 20mbit or 5MiB/s", s)
		}
		r := v * u.mult
		if r == 0 {
			return 0, nil
		}
		if r < proto.MinPace {
			return 0, fmt.Errorf("%q is below the least limit, 100kbit (12.5kB/s)", s)
		}
		return Rate(r), nil
	}
	lower := strings.ToLower(t)
	if strings.HasSuffix(lower, "bps") || strings.HasSuffix(lower, "b") {
		return 0, fmt.Errorf("%q: say bits as 20mbit, bytes as 2.5MB/s (an upper-case B)", s)
	}
	return 0, fmt.Errorf("%q has no unit: give one, such as 20mbit or 5MiB/s", s)
}

// UnmarshalText lets kong parse a Rate flag.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := ParseRate(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

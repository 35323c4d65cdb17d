package quiccli

import (
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    float64 // bytes per second
		wantErr string
	}{
		{"20mbit", 2.5e6, ""},
		{"20Mbit", 2.5e6, ""},
		{"20mbit/s", 2.5e6, ""},
		{"1.5gbit", 187.5e6, ""},
		{"800kbit", 1e5, ""},
		{"100kbit", 12500, ""},
		{"5MiB/s", 5 << 20, ""},
		{"5MiB", 5 << 20, ""},
		{"2.5MB/s", 2.5e6, ""},
		{"500kB/s", 5e5, ""},
		{"500KB", 5e5, ""},
		{"64KiB/s", 64 << 10, ""},
		{"1GiB/s", 1 << 30, ""},
		{"20000B/s", 20000, ""},
		{" 20mbit ", 2.5e6, ""},
		{"0", 0, ""},
		{"0mbit", 0, ""},
		{"20", 0, "no unit"},
		{"20mbps", 0, "upper-case B"},
		{"5mb/s", 0, "upper-case B"},
		{"99kbit", 0, "below the least"},
		{"1B/s", 0, "below the least"},
		{"-5mbit", 0, "not a rate"},
		{"mbit", 0, "not a rate"},
		{"NaNmbit", 0, "not a rate"},
		{"fast", 0, "no unit"},
		{"", 0, "no unit"},
	} {
		got, err := ParseRate(tc.in)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseRate(%q): %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseRate(%q) = %v, %v; want an error saying %q", tc.in, got, err, tc.wantErr)
		case tc.wantErr == "" && float64(got) != tc.want:
			t.Errorf("ParseRate(%q) = %v, want %v", tc.in, float64(got), tc.want)
		}
	}
}

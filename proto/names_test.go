package proto_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"simple", "a", true},
		{"nested", "a/b/c.txt", true},
		{"dot file", ".profile", true},
		{"dots inside", "a/..b/c..", true},
		{"three dots", "...", true},
		{"semicolon", "a;1", true},
		{"percent", "100%", true},
		{"space", "my file", true},
		{"unicode", "données/日本語.txt", true},
		// Linux names are bytes: all of these are legal there.
		{"Latin-1", "caf\xe9.txt", true},
		{"truncated UTF-8", "\xe6\x97", true},
		{"newline", "a\nb", true},
		{"tab and DEL", "a\tb\x7f", true},
		{"control characters", "\x01\x1f", true},
		{"backslash", `a\b`, true},
		{"4096 bytes", strings.Repeat("a/", 2047) + "ab", true},
		{"255-byte component", strings.Repeat("x", 255), true},
		{"255 bytes of CJK", strings.Repeat("日", 85), true},
		{"empty", "", false},
		{"dot", ".", false},
		{"dotdot", "..", false},
		{"dotdot component", "a/../b", false},
		{"trailing dotdot", "a/..", false},
		{"absolute", "/abs", false},
		{"trailing slash", "a/", false},
		{"double slash", "a//b", false},
		{"dot component", "a/./b", false},
		{"NUL", "a\x00b", false},
		{"4097 bytes", strings.Repeat("a/", 2048) + "a", false},
		{"256-byte component", "a/" + strings.Repeat("x", 256), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := proto.ValidateName(tt.in)
			if got := err == nil; got != tt.ok {
				t.Fatalf("ValidateName(%.40q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil && !errors.Is(err, proto.ErrInvalidName) {
				t.Errorf("ValidateName(%.40q) = %v, want an error wrapping ErrInvalidName", tt.in, err)
			}
		})
	}
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain/name.txt", "plain/name.txt"},
		{"my file", "my file"},
		{"données/日本語", "données/日本語"},
		{"caf\xe9.txt", `caf\xe9.txt`},
		{`a\b`, `a\\b`},
		{"a\nb\tc", `a\nb\tc`},
		{"\x01\x7f", `\x01\x7f`},
		{"zero\u200bwidth", `zero\u200bwidth`},
		{"\U000e0001tag", `\U000e0001tag`},
		{"\xed\xa0\x80", `\xed\xa0\x80`}, // a UTF-16 surrogate: not UTF-8
	}
	for _, tt := range tests {
		if got := proto.Quote(tt.in); got != tt.want {
			t.Errorf("Quote(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got, err := proto.Unquote(tt.want); err != nil || got != tt.in {
			t.Errorf("Unquote(%q) = %q, %v, want %q", tt.want, got, err, tt.in)
		}
	}
	for _, bad := range []string{`a\`, `\q`, `\x4`, `\xzz`, `\u12`, `\U1234567`} {
		if got, err := proto.Unquote(bad); err == nil {
			t.Errorf("Unquote(%q) = %q, nil; want an error", bad, got)
		}
	}
}

// FuzzName checks that ValidateName never panics and agrees with the
// rules stated independently here, and that Quote gives one printable line
// that Unquote turns back into the name.
func FuzzName(f *testing.F) {
	for _, s := range []string{"a", "a/b", "caf\xe9", `a\b`, "a\nb", "..", "a//b", "/a", "a/", "x\x00", strings.Repeat("日", 90), "\xed\xa0\x80", `\x41`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := proto.ValidateName(name)
		want := name != "" && len(name) <= proto.MaxNameLen && !strings.Contains(name, "\x00")
		for _, c := range strings.Split(name, "/") {
			if c == "" || c == "." || c == ".." || len(c) > proto.MaxComponentLen {
				want = false
			}
		}
		if (err == nil) != want {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", name, err, want)
		}
		q := proto.Quote(name)
		if strings.ContainsAny(q, "\n\r\x00") {
			t.Errorf("Quote(%q) = %q: not one line", name, q)
		}
		if got, err := proto.Unquote(q); err != nil || got != name {
			t.Errorf("Unquote(Quote(%q)) = %q, %v", name, got, err)
		}
	})
}

package store

import (
	"errors"
	"path"
	"strings"
	"testing"
)

// TestValidateName checks that the store takes the protocol's name rules
// (proto's TestValidateName has the table) and says why in its own error.
func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a/b", "caf\xe9", "a\nb", `a\b`} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", ok, err)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"", "store: invalid name: empty"},
		{"a//b", "store: invalid name: empty component 2 (leading, trailing or double '/')"},
		{"a\x00", "store: invalid name: NUL byte at byte 1"},
	} {
		err := ValidateName(tt.in)
		if !errors.Is(err, ErrInvalidName) || err.Error() != tt.want {
			t.Errorf("ValidateName(%q) = %v, want %q wrapping ErrInvalidName", tt.in, err, tt.want)
		}
	}
}

func TestValidateClientName(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"laptop", true},
		{"Anna's laptop", true},
		{"büro-pc", true},
		{strings.Repeat("n", 64), true},
		{"", false},
		{strings.Repeat("n", 65), false},
		{"a/b", false},
		{"a\x00b", false},
		{"tab\there", false},
		{"bad\xff", false},
		{"zero\u200bwidth", false}, // format character, not printable
	}
	for _, tt := range tests {
		err := validateClientName(tt.in)
		if got := err == nil; got != tt.ok {
			t.Errorf("validateClientName(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("validateClientName(%q) = %v, want ErrInvalidName", tt.in, err)
		}
	}
}

func TestParseClientID(t *testing.T) {
	id := ClientID{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10}
	if got, want := id.String(), "0123456789abcdeffedcba9876543210"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	tests := []struct {
		in   string
		want ClientID
		ok   bool
	}{
		{"0123456789abcdeffedcba9876543210", id, true},
		{"0123456789ABCDEFFEDCBA9876543210", id, true},
		{"", ClientID{}, false},
		{"0123456789abcdeffedcba987654321", ClientID{}, false},
		{"0123456789abcdeffedcba98765432100", ClientID{}, false},
		{"0123456789abcdeffedcba987654321g", ClientID{}, false},
	}
	for _, tt := range tests {
		got, err := ParseClientID(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseClientID(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestEscapeComponent(t *testing.T) {
	long := func(c string, n int) string { return strings.Repeat(c, n) }
	tests := []struct {
		in     string
		limit  int
		want   string
		hashed bool
	}{
		{"plain.txt", 255, "plain.txt", false},
		{"a;1", 255, "a%3B1", false},
		{"100%", 255, "100%25", false},
		{"%3B", 255, "%253B", false},
		{"con", 255, "con", false},
		{"日本", 255, "日本", false},
		{"a\\b", 255, "a%5Cb", false},   // invalid in names; escaped anyway
		{"a/b", 255, "a%2Fb", false},    // invalid in names; escaped anyway
		{"a\x01b", 255, "a%01b", false}, // invalid in names; escaped anyway
		{".", 255, "%2E", false},        // invalid in names; escaped anyway
		{"..", 255, "%2E%2E", false},    // invalid in names; escaped anyway
		{long("x", 255), 255, long("x", 255), false},
		{long("x", 234), 234, long("x", 234), false},
		{long("x", 235), 234, "", true},
		{long("%", 85), 255, long("%25", 85), false},
		{long("%", 86), 255, "", true},
	}
	for _, tt := range tests {
		got := escapeComponent(tt.in, tt.limit)
		if tt.hashed {
			if !strings.HasPrefix(got, "%H") || len(got) != 66 {
				t.Errorf("escapeComponent(%.20q..., %d) = %q, want %%H + 64 hex digits", tt.in, tt.limit, got)
			}
			continue
		}
		if got != tt.want {
			t.Errorf("escapeComponent(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
		}
	}
}

// TestVersionPathNoCollisions checks that distinct (name, version) pairs get
// distinct paths, that no version file sits where another name needs a
// directory, and that every path stays in the client directory.
func TestVersionPathNoCollisions(t *testing.T) {
	id := ClientID{1, 2, 3}
	names := []string{
		"a", "A", "a;1", "a;1;1", "a%3B1", "a%253B1", "a%", "a%25", "%H",
		"a/b", "a/b;1", "a;1/b", "a%2Fb", "b", "b/a", "a/b/c", "a/b;1/c",
		"con", "a;", ";", ";1", "%", "%%", "100%", "%2E", "%2E%2E", "a/%2E%2E/b",
		strings.Repeat("x", 234), strings.Repeat("x", 235), strings.Repeat("x", 255),
		strings.Repeat("x", 255) + "/y", strings.Repeat("%", 85) + "/y", strings.Repeat("%", 86) + "/y",
		// A literal "%H<hash>" name must not collide with a hashed component.
		"%H" + strings.Repeat("0", 64), escapeComponent(strings.Repeat("x", 235), 234),
	}
	files := map[string]string{} // path -> name;version
	dirs := map[string]string{}  // directory path -> name that needs it
	for _, n := range names {
		if err := ValidateName(n); err != nil {
			t.Fatalf("test name %q invalid: %v", n, err)
		}
		for v := 1; v <= 3; v++ {
			p, err := versionPath(id, n, v)
			if err != nil {
				t.Fatalf("versionPath(%q, %d): %v", n, v, err)
			}
			key := n + " v" + string(rune('0'+v))
			if other, dup := files[p]; dup {
				t.Errorf("versionPath(%q, %d) = %q, same as %s", n, v, p, other)
			}
			files[p] = key
			if err := checkInClientDir(id, p); err != nil {
				t.Errorf("versionPath(%q, %d) = %q: %v", n, v, p, err)
			}
			for _, c := range strings.Split(p, "/") {
				if len(c) > nameMax {
					t.Errorf("versionPath(%q, %d) has a %d-byte component", n, v, len(c))
				}
			}
			for d := path.Dir(p); d != clientDirRel(id); d = path.Dir(d) {
				dirs[d] = n
			}
		}
	}
	for p, key := range files {
		if n, clash := dirs[p]; clash {
			t.Errorf("version file %q of %s is a directory needed by %q", p, key, n)
		}
	}
}

func TestCheckInClientDir(t *testing.T) {
	id := ClientID{9}
	other := ClientID{8}
	base := clientDirRel(id)
	tests := []struct {
		rel string
		ok  bool
	}{
		{base + "/a;1", true},
		{base + "/a/b;1", true},
		{base, false},
		{base + "/", false},
		{base + "/../x;1", false},
		{base + "/a/../../x;1", false},
		{base + "/./a;1", false},
		{base + "//a;1", false},
		{clientDirRel(other) + "/a;1", false},
		{"clients/" + id.String() + "x/a;1", false},
		{"/etc/passwd", false},
		{"tmp/x.part", false},
	}
	for _, tt := range tests {
		err := checkInClientDir(id, tt.rel)
		if got := err == nil; got != tt.ok {
			t.Errorf("checkInClientDir(%q) = %v, want ok=%v", tt.rel, err, tt.ok)
		}
	}
}

func FuzzVersionPath(f *testing.F) {
	for _, s := range []string{"a", "a/b", "a;1", "100%", "..", "a/../b", "/x", "a//b", "%H00", strings.Repeat("%", 100)} {
		f.Add(s)
	}
	id := ClientID{7}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := versionPath(id, name, 1)
		if ValidateName(name) != nil {
			if err == nil {
				t.Fatalf("versionPath(%q) accepted an invalid name", name)
			}
			return
		}
		if err != nil {
			t.Fatalf("versionPath(%q): %v", name, err)
		}
		if err := checkInClientDir(id, p); err != nil {
			t.Fatalf("versionPath(%q) = %q: %v", name, p, err)
		}
		if !strings.HasSuffix(p, ";1") || strings.Count(p, ";") != 1 {
			t.Fatalf("versionPath(%q) = %q, want exactly one ';', at the version suffix", name, p)
		}
		if got, want := strings.Count(p, "/"), strings.Count(name, "/")+2; got != want {
			t.Fatalf("versionPath(%q) = %q has %d slashes, want %d", name, p, got, want)
		}
	})
}

package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testSum is the SumFunc of these tests: the checksums of sums.
func testSum(_ context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
	b, err := io.ReadAll(io.NewSectionReader(r, 0, size))
	if err != nil {
		return 0, [32]byte{}, err
	}
	if int64(len(b)) != size {
		return 0, [32]byte{}, io.ErrUnexpectedEOF
	}
	crc, sha := sums(b)
	return crc, sha, nil
}

// storedFile returns the path on disk of a stored version.
func storedFile(t *testing.T, s *Store, id ClientID, name string, version int) string {
	t.Helper()
	p, err := versionPath(id, name, version)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(s.Dir(), filepath.FromSlash(p))
}

// flipByte flips the bits of one byte of a file in place.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// versionKey names a version in the results of a check.
type versionKey struct {
	client  string
	name    string
	version int
}

// runCheck runs a check and returns its stats and what it reported of
// each version.
func runCheck(t *testing.T, check func(context.Context, CheckOptions) (CheckStats, error), o CheckOptions) (CheckStats, map[versionKey]CheckResult) {
	t.Helper()
	got := make(map[versionKey]CheckResult)
	if o.Sum == nil {
		o.Sum = testSum
	}
	o.Checked = func(r CheckResult) {
		k := versionKey{r.ClientName, r.Name, r.Version}
		if _, dup := got[k]; dup {
			t.Fatalf("%v reported twice", k)
		}
		got[k] = r
	}
	st, err := check(t.Context(), o)
	if err != nil {
		t.Fatalf("Check(%+v): %v", o, err)
	}
	return st, got
}

func TestCheck(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	alice, bob := register(t, s, "alice"), register(t, s, "bob")
	register(t, s, "carol") // nothing stored
	mtime := time.Unix(1700000000, 0)
	tests := []struct {
		client Client
		name   string
		harm   func(t *testing.T, path string)
		want   Damage
		detail string // in CheckResult.Detail
	}{
		{alice, "intact", nil, DamageNone, ""},
		{alice, "flipped", func(t *testing.T, p string) { flipByte(t, p, 1000) }, DamageMismatch, "recorded cksum"},
		{alice, "short", func(t *testing.T, p string) {
			if err := os.Truncate(p, 1999); err != nil {
				t.Fatal(err)
			}
		}, DamageSize, "1999 bytes, want 2000"},
		{alice, "longer", func(t *testing.T, p string) {
			if err := os.Truncate(p, 2001); err != nil {
				t.Fatal(err)
			}
		}, DamageSize, "2001 bytes, want 2000"},
		{alice, "dir/gone", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, DamageMissing, "no stored file"},
		{alice, "not-a-file", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}, DamageMissing, "not a regular file"},
		{bob, "flipped", func(t *testing.T, p string) { flipByte(t, p, 0) }, DamageMismatch, "recorded cksum"},
		{bob, "intact", nil, DamageNone, ""},
	}
	var wantBytes int64
	for _, tt := range tests {
		put(t, s, tt.client.ID, tt.name, randBytes(2000), mtime, 0o644)
		if tt.harm != nil {
			tt.harm(t, storedFile(t, s, tt.client.ID, tt.name, 1))
		}
		if tt.want == DamageNone || tt.want == DamageMismatch {
			wantBytes += 2000
		}
	}

	before := time.Now()
	st, got := runCheck(t, s.Check, CheckOptions{})
	if want := (CheckStats{Clients: 2, Versions: len(tests), Bytes: wantBytes, Damaged: 6}); st != want {
		t.Errorf("Check stats = %+v, want %+v", st, want)
	}
	for _, tt := range tests {
		k := versionKey{tt.client.Name, tt.name, 1}
		r, ok := got[k]
		if !ok {
			t.Errorf("%v: not reported", k)
			continue
		}
		if r.Damage != tt.want || !strings.Contains(r.Detail, tt.detail) || r.Client != tt.client.ID || r.Size != 2000 || r.WasDamaged {
			t.Errorf("%v: %+v; want %v with %q", k, r, tt.want, tt.detail)
		}
		fv, err := s.Latest(ctx, tt.client.ID, tt.name)
		if err != nil {
			t.Fatal(err)
		}
		if fv.Damaged != (tt.want != DamageNone) || fv.CheckedAt.Before(before) {
			t.Errorf("%v after the check: damaged %v, checked at %v; want damaged %v, checked after %v", k, fv.Damaged, fv.CheckedAt, tt.want != DamageNone, before)
		}
	}
	if len(got) != len(tests) {
		t.Errorf("%d versions reported, want %d", len(got), len(tests))
	}

	// One client only; the damage found before is found again.
	st, got = runCheck(t, s.Check, CheckOptions{Client: "bob"})
	if want := (CheckStats{Clients: 1, Versions: 2, Bytes: 4000, Damaged: 1}); st != want {
		t.Errorf("Check of bob: stats %+v, want %+v", st, want)
	}
	if r := got[versionKey{"bob", "flipped", 1}]; r.Damage != DamageMismatch || !r.WasDamaged {
		t.Errorf("bob's flipped file checked again: %+v, want a mismatch marked before", r)
	}
	for k := range got {
		if k.client != "bob" {
			t.Errorf("Check of bob reported %v", k)
		}
	}
	if st, _ := runCheck(t, s.Check, CheckOptions{Client: "carol"}); st != (CheckStats{}) {
		t.Errorf("Check of carol, who stored nothing: %+v", st)
	}
	if _, err := s.Check(ctx, CheckOptions{Client: "dave", Sum: testSum}); !errors.Is(err, ErrUnknownClient) || !strings.Contains(err.Error(), `"dave"`) {
		t.Errorf("Check of an unknown client: %v, want ErrUnknownClient naming it", err)
	}
}

// TestCheckClearsMark: a version found intact again (here its file was
// put back by hand) loses its damaged mark.
func TestCheckClearsMark(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	data := randBytes(5000)
	put(t, s, c.ID, "f", data, time.Unix(1, 0), 0o644)
	path := storedFile(t, s, c.ID, "f", 1)
	flipByte(t, path, 4999)
	if st, _ := runCheck(t, s.Check, CheckOptions{}); st.Damaged != 1 {
		t.Fatalf("first check: %+v, want 1 damaged", st)
	}
	flipByte(t, path, 4999)
	st, got := runCheck(t, s.Check, CheckOptions{})
	if want := (CheckStats{Clients: 1, Versions: 1, Bytes: 5000, Cleared: 1}); st != want {
		t.Errorf("second check: %+v, want %+v", st, want)
	}
	if r := got[versionKey{"laptop", "f", 1}]; r.Damage != DamageNone || !r.WasDamaged {
		t.Errorf("second check reported %+v, want intact, marked before", r)
	}
	if fv, err := s.Latest(t.Context(), c.ID, "f"); err != nil || fv.Damaged {
		t.Errorf("after the second check: %+v, %v; want not damaged", fv, err)
	}
}

// TestCheckPages: versions are listed a page at a time, across clients
// and names, each exactly once, in the order of client ID, name, version.
func TestCheckPages(t *testing.T) {
	defer func(n int) { checkPage = n }(checkPage)
	checkPage = 2
	s := openStore(t, t.TempDir())
	var want []versionKey
	for _, name := range []string{"c1", "c2", "c3"} {
		c := register(t, s, name)
		for _, f := range []string{"a", "b"} {
			put(t, s, c.ID, f, []byte(name+f), time.Unix(1, 0), 0o644)
			want = append(want, versionKey{name, f, 1})
		}
		put(t, s, c.ID, "a", []byte("again"), time.Unix(2, 0), 0o644)
		want = append(want, versionKey{name, "a", 2})
	}
	var order []CheckResult
	st, err := s.Check(t.Context(), CheckOptions{Sum: testSum, Checked: func(r CheckResult) {
		if order = append(order, r); len(order) > 2*len(want) {
			t.Fatalf("%d versions reported, of %d stored", len(order), len(want))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Versions != len(want) || st.Clients != 3 || st.Damaged != 0 {
		t.Errorf("stats %+v, want %d versions of 3 clients, none damaged", st, len(want))
	}
	var got []versionKey
	for i, r := range order {
		got = append(got, versionKey{r.ClientName, r.Name, r.Version})
		if i > 0 {
			p := order[i-1]
			if c := bytes.Compare(p.Client[:], r.Client[:]); c > 0 || c == 0 && (p.Name > r.Name || p.Name == r.Name && p.Version >= r.Version) {
				t.Errorf("%v reported after %v", got[i], got[i-1])
			}
		}
	}
	slices.SortFunc(got, func(a, b versionKey) int {
		return strings.Compare(a.client+"/"+a.name+string(rune('0'+a.version)), b.client+"/"+b.name+string(rune('0'+b.version)))
	})
	slices.SortFunc(want, func(a, b versionKey) int {
		return strings.Compare(a.client+"/"+a.name+string(rune('0'+a.version)), b.client+"/"+b.name+string(rune('0'+b.version)))
	})
	if !slices.Equal(got, want) {
		t.Errorf("reported %v\nwant %v", got, want)
	}

	// One client's versions take two pages too.
	st, one := runCheck(t, s.Check, CheckOptions{Client: "c2"})
	if st.Versions != 3 || len(one) != 3 {
		t.Errorf("check of c2: %+v, %v; want its 3 versions", st, one)
	}
}

// TestCheckDue: with DueBefore, a check reads only the versions stored
// and last checked before it.
func TestCheckDue(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	put(t, s, c.ID, "old", []byte("old"), time.Unix(1, 0), 0o644)
	due := time.Now()
	put(t, s, c.ID, "new", []byte("new"), time.Unix(1, 0), 0o644)
	steps := []struct {
		due  time.Time // zero: now
		want []string
	}{
		{due, []string{"old"}},
		{due, nil}, // old was just checked
		{time.Time{}, []string{"new", "old"}},
	}
	for i, step := range steps {
		if step.due.IsZero() {
			step.due = time.Now()
		}
		_, got := runCheck(t, s.Check, CheckOptions{DueBefore: step.due})
		var names []string
		for k := range got {
			names = append(names, k.name)
		}
		slices.Sort(names)
		if !slices.Equal(names, step.want) {
			t.Errorf("step %d: checked %v, want %v", i, names, step.want)
		}
	}
}

// TestCheckRacesHeal: a heal that replaces a damaged version's file while
// a check reads the old file wins: the check's verdict on the old file is
// not recorded over the heal; the check reads the version again and finds
// it intact.
func TestCheckRacesHeal(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	data := randBytes(3000)
	put(t, s, c.ID, "e", randBytes(10), time.Unix(1, 0), 0o644) // checked in the same batch
	put(t, s, c.ID, "f", data, time.Unix(1, 0), 0o644)
	put(t, s, c.ID, "g", randBytes(10), time.Unix(1, 0), 0o644)
	flipByte(t, storedFile(t, s, c.ID, "f", 1), 7)
	if st, _ := runCheck(t, s.Check, CheckOptions{}); st.Damaged != 1 {
		t.Fatalf("first check: %+v, want 1 damaged", st)
	}

	calls := 0
	healDuringRead := func(ctx context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
		if size != int64(len(data)) {
			return testSum(ctx, r, size)
		}
		calls++
		if calls == 1 {
			// The check has the damaged file open; the client sends it
			// again.
			u, err := s.NewUpload(ctx, c.ID, "f", int64(len(data)), time.Unix(1, 0), 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := u.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			crc, sha := sums(data)
			if _, created, err := u.Commit(ctx, crc, sha); err != nil || created || !u.Healed() {
				t.Fatalf("heal during the check: created %v, healed %v, %v", created, u.Healed(), err)
			}
		}
		return testSum(ctx, r, size)
	}
	st, got := runCheck(t, s.Check, CheckOptions{Sum: healDuringRead})
	if calls != 2 {
		t.Errorf("the version was read %d times, want 2 (again after the heal)", calls)
	}
	if want := (CheckStats{Clients: 1, Versions: 3, Bytes: 3020}); st != want {
		t.Errorf("check during the heal: %+v, want %+v", st, want)
	}
	if r := got[versionKey{"laptop", "f", 1}]; r.Damage != DamageNone || r.WasDamaged {
		t.Errorf("check during the heal reported %+v, want intact, not marked (the heal cleared it)", r)
	}
	fv, err := s.Latest(ctx, c.ID, "f")
	if err != nil || fv.Damaged {
		t.Fatalf("after the heal and the check: %+v, %v; want not damaged", fv, err)
	}
	if got := content(t, s, c.ID, fv); !bytes.Equal(got, data) {
		t.Error("the healed version does not hold the data")
	}
}

// TestCheckRecordsDamageAtOnce: damage is recorded as soon as it is
// found, while the check goes on (results of intact versions are written
// in batches).
func TestCheckRecordsDamageAtOnce(t *testing.T) {
	s := openStore(t, t.TempDir())
	c := register(t, s, "laptop")
	put(t, s, c.ID, "a", randBytes(100), time.Unix(1, 0), 0o644)
	put(t, s, c.ID, "b", randBytes(200), time.Unix(1, 0), 0o644)
	flipByte(t, storedFile(t, s, c.ID, "a", 1), 0)
	var seen bool
	sum := func(ctx context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
		if size == 200 { // b, after a
			fv, err := s.Latest(ctx, c.ID, "a")
			seen = err == nil && fv.Damaged
		}
		return testSum(ctx, r, size)
	}
	if st, _ := runCheck(t, s.Check, CheckOptions{Sum: sum}); st.Damaged != 1 || st.Versions != 2 {
		t.Fatalf("check: %+v, want 2 versions, 1 damaged", st)
	}
	if !seen {
		t.Error("the damage found in a was not recorded while b was read")
	}
}

func TestCheckVersion(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := t.Context()
	c := register(t, s, "laptop")
	put(t, s, c.ID, "f", randBytes(100), time.Unix(1, 0), 0o644)
	put(t, s, c.ID, "f", randBytes(100), time.Unix(2, 0), 0o644)
	flipByte(t, storedFile(t, s, c.ID, "f", 1), 50)
	tests := []struct {
		version int
		want    Damage
		err     error
	}{
		{1, DamageMismatch, nil},
		{2, DamageNone, nil},
		{3, DamageNone, ErrNotFound},
	}
	for _, tt := range tests {
		r, recorded, err := s.CheckVersion(ctx, c.ID, "f", tt.version, testSum)
		if !errors.Is(err, tt.err) || err == nil && (!recorded || r.Damage != tt.want) {
			t.Errorf("CheckVersion(%d) = %+v, %v, %v; want %v, recorded, error %v", tt.version, r, recorded, err, tt.want, tt.err)
		}
		if tt.err != nil {
			continue
		}
		fv, err := s.Version(ctx, c.ID, "f", tt.version)
		if err != nil || fv.Damaged != (tt.want != DamageNone) || fv.CheckedAt.IsZero() {
			t.Errorf("version %d after CheckVersion: %+v, %v", tt.version, fv, err)
		}
	}
}

// TestCheckerBesideStore: a Checker opened on the directory of a running
// Store (as qbackupd check does) finds damage, and the Store sees the
// mark at once; a heal through the Store then clears it.
func TestCheckerBesideStore(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenChecker(t.Context(), dir); err == nil || !strings.Contains(err.Error(), "no qbackup database") {
		t.Errorf("OpenChecker of an empty directory: %v, want an error saying there is no database", err)
	}
	s := openStore(t, dir)
	ctx := t.Context()
	c := register(t, s, "laptop")
	data := randBytes(4096)
	put(t, s, c.ID, "docs/a", data, time.Unix(1, 0), 0o644)
	flipByte(t, storedFile(t, s, c.ID, "docs/a", 1), 4095)

	ck, err := OpenChecker(ctx, dir)
	if err != nil {
		t.Fatalf("OpenChecker beside an open Store: %v", err)
	}
	defer ck.Close()
	st, got := runCheck(t, ck.Check, CheckOptions{})
	if st.Damaged != 1 || got[versionKey{"laptop", "docs/a", 1}].Damage != DamageMismatch {
		t.Fatalf("Checker found %+v, %v; want docs/a damaged", st, got)
	}
	if fv, err := s.Latest(ctx, c.ID, "docs/a"); err != nil || !fv.Damaged {
		t.Fatalf("the Store sees %+v, %v; want damaged", fv, err)
	}
	fv, created := put(t, s, c.ID, "docs/a", data, time.Unix(1, 0), 0o644)
	if created || fv.Damaged || fv.Version != 1 {
		t.Fatalf("sending the same content again: %+v, created %v; want version 1 healed", fv, created)
	}
	if st, _ := runCheck(t, ck.Check, CheckOptions{}); st.Damaged != 0 || st.Versions != 1 {
		t.Errorf("Checker after the heal: %+v, want 1 version, none damaged", st)
	}
}

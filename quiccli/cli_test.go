package quiccli

// Tests of the command line as a user runs it: Main is driven in process
// with the arguments a user would type, against a real server on UDP
// loopback, and its exit status, standard output and standard error are
// checked. TestCLIProgressBarsOnTerminal runs the built binary in tmux.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// cliResult is what one run of the command line left behind.
type cliResult struct {
	args   []string
	code   int
	stdout string
	stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("qbackup %s: exit %d\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runMain runs Main with args as a user would type them after "qbackup".
func runMain(t *testing.T, ctx context.Context, stdin io.Reader, args ...string) cliResult {
	t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	var out, errOut bytes.Buffer
	code := Main(ctx, args, stdin, &out, &errOut)
	r := cliResult{args: args, code: code, stdout: out.String(), stderr: errOut.String()}
	t.Logf("%v", r)
	return r
}

// cliUser is one user with one home directory, typing commands.
type cliUser struct {
	t    *testing.T
	ctx  context.Context
	home string
}

func newCLIUser(t *testing.T) *cliUser {
	return &cliUser{t: t, ctx: testContext(t), home: filepath.Join(t.TempDir(), "home")}
}

// run runs "qbackup --home HOME --key-bits 2048 ARGS...".
func (u *cliUser) run(args ...string) cliResult {
	u.t.Helper()
	return runMain(u.t, u.ctx, nil, append([]string{"--home", u.home, "--key-bits", "2048"}, args...)...)
}

// ok runs a command that must succeed.
func (u *cliUser) ok(args ...string) cliResult {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("qbackup %s: exit %d, want 0; stderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// register registers the user with srv, pinning its certificate.
func (u *cliUser) register(srv *srvtest.Server, name string) cliResult {
	u.t.Helper()
	return u.ok("register", "--server", srv.Addr, "--name", name, "--fingerprint", srv.Fingerprint)
}

// Things no message meant for a user may contain.
var (
	stackTraceRE = regexp.MustCompile(`goroutine \d+|\.go:\d+|runtime\.|panic`)
	bareEOFRE    = regexp.MustCompile(`\bEOF\b`)
	// internalRE matches the names of Go packages that prefix their errors
	// (qbackup's own, and the encoding ones a bad key file meets) and Go
	// type names as %T prints them.
	internalRE = regexp.MustCompile(`(?:^|[\s(])(?:proto|store|certs|x509|asn1|pem|json):|\*[a-z][a-z0-9]*\.[A-Z]\w*`)
)

// checkClean reports text that should never reach a user.
func checkClean(t *testing.T, what, s string) {
	t.Helper()
	if m := stackTraceRE.FindString(s); m != "" {
		t.Errorf("%s contains %q, a panic or stack trace:\n%s", what, m, s)
	}
	if bareEOFRE.MatchString(s) {
		t.Errorf("%s contains a bare EOF:\n%s", what, s)
	}
	if strings.Contains(s, "%!") {
		t.Errorf("%s contains a formatting artifact (%%!):\n%s", what, s)
	}
	if m := internalRE.FindString(s); m != "" {
		t.Errorf("%s contains %q, a Go package or type name:\n%s", what, m, s)
	}
}

// checkFailure asserts that a run failed with exit status code and ended
// with one clean line "qbackup: ..." on standard error that contains every
// string in want. It returns that line.
func checkFailure(t *testing.T, r cliResult, code int, want ...string) string {
	t.Helper()
	if r.code != code {
		t.Errorf("qbackup %s: exit %d, want %d", strings.Join(r.args, " "), r.code, code)
	}
	checkClean(t, "stdout", r.stdout)
	checkClean(t, "stderr", r.stderr)
	if !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr %q does not end with a newline", r.stderr)
		return ""
	}
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "qbackup: ") || len(last) <= len("qbackup: ") {
		t.Errorf("the last line of stderr is %q, want an error message prefixed \"qbackup: \"", last)
	}
	for _, l := range lines[:len(lines)-1] {
		if strings.HasPrefix(l, "qbackup: ") {
			t.Errorf("stderr holds more than one error line:\n%s", r.stderr)
			break
		}
	}
	for _, w := range want {
		if !strings.Contains(last, w) {
			t.Errorf("error %q does not mention %q", last, w)
		}
	}
	return last
}

// summaryRE matches send's last line.
var summaryRE = regexp.MustCompile(`(?m)^(\d+) sent, (\d+) unchanged, (\d+) failed(?:, (\d+) changed while read)?(?:, (\d+) incomplete)?(?:, (\d+) interrupted, (\d+) not started)?; \d+(?:\.\d)? (?:B|[KMGTP]iB) in \S+ \(\d+(?:\.\d)? (?:B|[KMGTP]iB)/s\)$`)

// sendCounts are the numbers in send's summary line.
type sendCounts struct{ sent, unchanged, failed, changed, incomplete, interrupted, notStarted int }

func parseSummary(t *testing.T, stdout string) sendCounts {
	t.Helper()
	m := summaryRE.FindAllStringSubmatch(stdout, -1)
	if len(m) != 1 {
		t.Fatalf("stdout holds %d summary lines \"N sent, N unchanged, N failed; ...\", want 1:\n%s", len(m), stdout)
	}
	if !strings.HasSuffix(stdout, m[0][0]+"\n") {
		t.Errorf("the summary %q is not the last line of stdout:\n%s", m[0][0], stdout)
	}
	n := func(s string) int { v, _ := strconv.Atoi(s); return v }
	return sendCounts{n(m[0][1]), n(m[0][2]), n(m[0][3]), n(m[0][4]), n(m[0][5]), n(m[0][6]), n(m[0][7])}
}

// coreutilsCksum is the path of cksum(1); tests that compare with it skip
// when it is missing.
const coreutilsCksum = "/usr/bin/cksum"

func needCksum(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(coreutilsCksum); err != nil {
		t.Skipf("%s is missing: %v", coreutilsCksum, err)
	}
}

// runCksum runs coreutils cksum and returns its stdout, stderr and exit status.
func runCksum(t *testing.T, stdin io.Reader, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(coreutilsCksum, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdin = stdin
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cksum: %v", err)
	}
	return out.String(), errOut.String(), code
}

// fileCksum is the "CRC SIZE" cksum(1) prints for path, or, without
// coreutils, what proto computes.
func fileCksum(t *testing.T, path string) string {
	t.Helper()
	if _, err := os.Stat(coreutilsCksum); err != nil {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%d %d", proto.CksumBytes(b), len(b))
	}
	out, stderr, code := runCksum(t, nil, path)
	f := strings.Fields(out)
	if code != 0 || len(f) < 2 {
		t.Fatalf("cksum %s: exit %d, %q %q", path, code, out, stderr)
	}
	return f[0] + " " + f[1]
}

// writeFast writes size pseudo-random bytes quickly (for large files).
func writeFast(t *testing.T, path string, size int, seed byte) []byte {
	t.Helper()
	b := make([]byte, size)
	var s [32]byte
	s[0] = seed
	rand.NewChaCha8(s).Read(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// assertSameFile checks that got holds want's bytes.
func assertSameFile(t *testing.T, got string, want []byte) {
	t.Helper()
	b, err := os.ReadFile(got)
	if err != nil {
		t.Errorf("restored file: %v", err)
		return
	}
	if !bytes.Equal(b, want) {
		t.Errorf("%s: %d bytes that differ from the %d bytes sent", got, len(b), len(want))
	}
}

// assertSameTree checks that the regular files under got equal those under want.
func assertSameTree(t *testing.T, got, want string) {
	t.Helper()
	list := func(root string) map[string][]byte {
		m := map[string][]byte{}
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				t.Errorf("walk %s: %v", p, err)
				return nil
			}
			if d.Type().IsRegular() {
				rel, _ := filepath.Rel(root, p)
				b, err := os.ReadFile(p)
				if err != nil {
					t.Error(err)
				}
				m[filepath.ToSlash(rel)] = b
			}
			return nil
		})
		return m
	}
	g, w := list(got), list(want)
	for name, b := range w {
		if gb, ok := g[name]; !ok {
			t.Errorf("%s: %s was not restored", got, name)
		} else if !bytes.Equal(gb, b) {
			t.Errorf("%s: %s differs from the original", got, name)
		}
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			t.Errorf("%s: %s was restored but never sent", got, name)
		}
	}
}

// lsRow is one row of ls.
type lsRow struct {
	mode, name, size, version, versions, stored, cksum, verified string
}

var lsColumns = regexp.MustCompile(` {2,}`)

// parseLs checks ls's header and returns its rows.
func parseLs(t *testing.T, stdout string) []lsRow {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	wantHeader := []string{"MODE", "NAME", "SIZE", "VERSION", "VERSIONS", "STORED", "CKSUM", "VERIFIED"}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != strings.Join(wantHeader, " ") {
		t.Fatalf("ls header = %q, want the columns %v", lines[0], wantHeader)
	}
	var rows []lsRow
	for _, l := range lines[1:] {
		c := lsColumns.Split(strings.TrimRight(l, " "), -1)
		if len(c) != 8 {
			t.Fatalf("ls row %q has %d columns, want 8", l, len(c))
		}
		rows = append(rows, lsRow{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]})
	}
	return rows
}

// ---------------------------------------------------------------------------
// cksum

func TestCLICksumMatchesCoreutils(t *testing.T) {
	needCksum(t)
	t.Parallel()
	ctx := testContext(t)
	dir := t.TempDir()
	files := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one", 1},
		{"three", 3},
		{"4k", 4096},
		{"chunk-plus-1", testChunk + 1},
		{"mib-plus-1", 1<<20 + 1},
		{"with space", 1000},
	}
	var paths []string
	for i, f := range files {
		p := filepath.Join(dir, f.name)
		writeRandom(t, p, f.size, uint64(i+1))
		paths = append(paths, p)
	}

	t.Run("each file alone", func(t *testing.T) {
		for _, p := range paths {
			r := runMain(t, ctx, nil, "cksum", p)
			want, _, _ := runCksum(t, nil, p)
			if r.code != 0 || r.stdout != want || r.stderr != "" {
				t.Errorf("qbackup cksum %s: exit %d, stdout %q, stderr %q; want 0, %q (coreutils), \"\"", filepath.Base(p), r.code, r.stdout, r.stderr, want)
			}
		}
	})

	t.Run("all files at once", func(t *testing.T) {
		r := runMain(t, ctx, nil, append([]string{"cksum"}, paths...)...)
		want, _, _ := runCksum(t, nil, paths...)
		if r.code != 0 || r.stdout != want {
			t.Errorf("qbackup cksum FILES: exit %d, stdout\n%s\nwant 0 and coreutils' output\n%s", r.code, r.stdout, want)
		}
	})

	t.Run("relative names are printed as given", func(t *testing.T) {
		t.Parallel() // no Chdir: relative to the package directory
		wd, err := os.Getwd()
		if err != nil {
			t.Skip(err)
		}
		rel, err := filepath.Rel(wd, paths[1])
		if err != nil {
			t.Skip(err)
		}
		r := runMain(t, ctx, nil, "cksum", rel)
		want, _, _ := runCksum(t, nil, rel)
		if r.stdout != want {
			t.Errorf("qbackup cksum %s = %q, want %q", rel, r.stdout, want)
		}
	})

	t.Run("standard input", func(t *testing.T) {
		for _, p := range paths {
			in, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			r := runMain(t, ctx, in, "cksum")
			in.Close()
			in, _ = os.Open(p)
			want, _, _ := runCksum(t, in)
			in.Close()
			if r.code != 0 || r.stdout != want {
				t.Errorf("qbackup cksum < %s: exit %d, stdout %q; want 0, %q (cksum < file)", filepath.Base(p), r.code, r.stdout, want)
			}
		}
	})

	t.Run("dash is standard input", func(t *testing.T) {
		in, _ := os.Open(paths[2])
		defer in.Close()
		r := runMain(t, ctx, in, "cksum", "-")
		in2, _ := os.Open(paths[2])
		defer in2.Close()
		want, _, _ := runCksum(t, in2, "-")
		if r.code != 0 || r.stdout != want {
			t.Errorf("qbackup cksum - < file: exit %d, stdout %q; want 0, %q", r.code, r.stdout, want)
		}
	})

	t.Run("unreadable operands", func(t *testing.T) {
		missing := filepath.Join(dir, "no-such-file")
		subdir := filepath.Join(dir, "a-directory")
		if err := os.Mkdir(subdir, 0o755); err != nil {
			t.Fatal(err)
		}
		// The lines of the readable files, as coreutils prints them.
		want, _, _ := runCksum(t, nil, paths[1], paths[5])
		for _, tc := range []struct {
			bad     string
			wantErr string
		}{
			{missing, "qbackup: " + missing + ": no such file or directory\n"},
			// coreutils 9.1 prints a checksum of nothing for a
			// directory; an error is better.
			{subdir, "qbackup: " + subdir + ": is a directory\n"},
		} {
			r := runMain(t, ctx, nil, "cksum", paths[1], tc.bad, paths[5])
			if r.code != 1 {
				t.Errorf("cksum with %s: exit %d, want 1", filepath.Base(tc.bad), r.code)
			}
			if r.stdout != want {
				t.Errorf("cksum with %s: stdout\n%s\nwant the other files' lines:\n%s", filepath.Base(tc.bad), r.stdout, want)
			}
			if r.stderr != tc.wantErr {
				t.Errorf("cksum with %s: stderr %q, want %q", filepath.Base(tc.bad), r.stderr, tc.wantErr)
			}
			checkClean(t, "stderr", r.stderr)
		}
	})
}

// ---------------------------------------------------------------------------
// register

var clientIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestCLIRegister(t *testing.T) {
	t.Parallel()
	srv := startServer(t)

	t.Run("prints the client ID and fingerprint", func(t *testing.T) {
		u := newCLIUser(t)
		r := u.register(srv, "alice")
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		re := regexp.MustCompile(`^registered "alice" with ` + regexp.QuoteMeta(srv.Addr) + ` as client ([0-9a-f]+)$`)
		if len(lines) != 2 || !re.MatchString(lines[0]) || lines[1] != "server certificate sha256 "+srv.Fingerprint {
			t.Fatalf("register printed\n%s\nwant\nregistered \"alice\" with %s as client <32 hex digits>\nserver certificate sha256 %s", r.stdout, srv.Addr, srv.Fingerprint)
		}
		cid := re.FindStringSubmatch(lines[0])[1]
		if !clientIDRE.MatchString(cid) {
			t.Errorf("client ID %q is not 32 hex digits", cid)
		}
		if !strings.Contains(r.stderr, "generating a 2048-bit RSA key") {
			t.Errorf("stderr %q does not say a key is being generated", r.stderr)
		}
		checkClean(t, "stdout", r.stdout)
		checkClean(t, "stderr", r.stderr)
		var id Identity
		b, err := os.ReadFile(filepath.Join(u.home, identityFile))
		if err != nil {
			t.Fatalf("no identity saved: %v", err)
		}
		if err := json.Unmarshal(b, &id); err != nil || id.ClientID != cid || id.Fingerprint != srv.Fingerprint || id.Server != srv.Addr || id.Name != "alice" {
			t.Errorf("saved identity %+v (%v), want client %s of %s pinning %s", id, err, cid, srv.Addr, srv.Fingerprint)
		}

		// Registering again confirms the same client, with the same key.
		again := u.register(srv, "alice")
		if !strings.Contains(again.stdout, "as client "+cid+"\n") {
			t.Errorf("registering again printed %q, want the same client %s", again.stdout, cid)
		}
		if strings.Contains(again.stderr, "generating") {
			t.Errorf("registering again generated a new key: %q", again.stderr)
		}
	})

	t.Run("trust on first use", func(t *testing.T) {
		u := newCLIUser(t)
		r := u.ok("register", "--server", srv.Addr, "--name", "bob")
		if !strings.Contains(r.stdout, "server certificate sha256 "+srv.Fingerprint+"\n") {
			t.Errorf("stdout %q does not show the certificate trusted, %s", r.stdout, srv.Fingerprint)
		}
		if !strings.Contains(r.stderr, "trusting the certificate of "+srv.Addr+" on first use: sha256 "+srv.Fingerprint) {
			t.Errorf("stderr %q does not say the certificate is trusted on first use", r.stderr)
		}
	})

	t.Run("fingerprint forms", func(t *testing.T) {
		fp := srv.Fingerprint
		var colons []string
		for i := 0; i < len(fp); i += 2 {
			colons = append(colons, strings.ToUpper(fp[i:i+2]))
		}
		for i, form := range []string{"sha256:" + fp, strings.Join(colons, ":"), "SHA256:" + strings.ToUpper(fp)} {
			u := newCLIUser(t)
			r := u.ok("register", "--server", srv.Addr, "--name", fmt.Sprintf("form%d", i), "--fingerprint", form)
			if !strings.Contains(r.stdout, "sha256 "+fp) {
				t.Errorf("--fingerprint %s: stdout %q, want the canonical %s", form, r.stdout, fp)
			}
		}
	})

	t.Run("malformed fingerprint", func(t *testing.T) {
		for _, fp := range []string{
			"zz",
			"abcd",
			srv.Fingerprint[:63],
			srv.Fingerprint + "00",
			"sha1:" + srv.Fingerprint,
		} {
			u := newCLIUser(t)
			r := u.run("register", "--server", srv.Addr, "--name", "carol", "--fingerprint", fp)
			checkFailure(t, r, 1, "not a SHA-256 fingerprint", "64 hex digits")
			if r.stdout != "" {
				t.Errorf("--fingerprint %q: stdout %q, want nothing", fp, r.stdout)
			}
			if _, err := os.Stat(filepath.Join(u.home, identityFile)); err == nil {
				t.Errorf("--fingerprint %q: an identity was saved", fp)
			}
		}
	})

	t.Run("malformed fingerprint names no Go package", func(t *testing.T) {
		u := newCLIUser(t)
		r := u.run("register", "--server", srv.Addr, "--name", "carol", "--fingerprint", "zz")
		if msg := checkFailure(t, r, 1); strings.HasPrefix(msg, "qbackup: certs:") {
			t.Errorf("error %q names the Go package certs", msg)
		}
	})

	t.Run("wrong fingerprint", func(t *testing.T) {
		u := newCLIUser(t)
		wrong := strings.Repeat("ab", 32)
		r := u.run("register", "--server", srv.Addr, "--name", "dave", "--fingerprint", wrong)
		checkFailure(t, r, 1, "not the --fingerprint", wrong, srv.Fingerprint)
	})

	t.Run("wrong fingerprint on a first registration", func(t *testing.T) {
		u := newCLIUser(t)
		wrong := strings.Repeat("ab", 32)
		msg := checkFailure(t, u.run("register", "--server", srv.Addr, "--name", "dave", "--fingerprint", wrong), 1, wrong, srv.Fingerprint)
		if strings.Contains(msg, "has changed") || strings.Contains(msg, "pinned") {
			t.Errorf("error %q speaks of a changed, pinned certificate on a first registration", msg)
		}
	})

	t.Run("missing flags", func(t *testing.T) {
		u := newCLIUser(t)
		checkFailure(t, u.run("register", "--name", "erin"), 2, "--server")
		checkFailure(t, u.run("register", "--server", srv.Addr), 2, "--name")
	})

	t.Run("bad address", func(t *testing.T) {
		u := newCLIUser(t)
		checkFailure(t, u.run("register", "--server", "127.0.0.1", "--name", "erin"), 1, "127.0.0.1", "missing port")
	})
}

// freeUDPAddr returns a loopback UDP address nothing listens on.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestCLIRegisterNoServer(t *testing.T) {
	t.Parallel()
	addr := freeUDPAddr(t)

	// Cut short by the caller's context: the same advice, quickly.
	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		home := filepath.Join(t.TempDir(), "home")
		start := time.Now()
		r := runMain(t, ctx, nil, "--home", home, "--key-bits", "2048", "register", "--server", addr, "--name", "alice")
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("register took %v after a 1.5s deadline", d)
		}
		checkFailure(t, r, 1, "no answer from "+addr, "is qbackupd running")
	})

	// As a user meets it: nothing but QUIC's handshake timeout (10s) ends
	// the wait, since an ICMP port unreachable is not reported.
	t.Run("handshake timeout", func(t *testing.T) {
		if testing.Short() {
			t.Skip("waits for the 10s QUIC handshake timeout")
		}
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		home := filepath.Join(t.TempDir(), "home")
		start := time.Now()
		r := runMain(t, ctx, nil, "--home", home, "--key-bits", "2048", "register", "--server", addr, "--name", "alice")
		d := time.Since(start)
		if ctx.Err() != nil {
			t.Fatalf("register to a port with no server still waited after %v", d)
		}
		t.Logf("register to a port with no server gave up after %v", d)
		msg := checkFailure(t, r, 1, "no answer from "+addr, "is qbackupd running")
		if strings.Contains(msg, "interrupted") {
			t.Errorf("error %q says interrupted, but nobody interrupted it", msg)
		}
	})
}

// ---------------------------------------------------------------------------
// send

func TestCLISendNeedsIdentity(t *testing.T) {
	t.Parallel()
	u := newCLIUser(t)
	f := filepath.Join(t.TempDir(), "f")
	writeRandom(t, f, 10, 1)
	for _, args := range [][]string{
		{"send", f},
		{"send", "--name", "alice", f},
		{"ls"},
		{"restore", "f"},
	} {
		r := u.run(args...)
		checkFailure(t, r, 1, "no identity in "+u.home, "qbackup register")
	}
	if _, err := os.Stat(filepath.Join(u.home, identityFile)); err == nil {
		t.Errorf("an identity was saved without a registration")
	}
}

func TestCLISendRegistersFirst(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	src := filepath.Join(t.TempDir(), "notes.txt")
	data := writeRandom(t, src, 100000, 1)

	r := u.ok("send", "--server", srv.Addr, "--name", "alice", src)
	if !regexp.MustCompile(`registered as "alice" \(client ID [0-9a-f]{32}\)`).MatchString(r.stderr) {
		t.Errorf("stderr %q does not say it registered first", r.stderr)
	}
	if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 1}) {
		t.Errorf("first send: %+v, want 1 sent", got)
	}
	id, err := loadIdentity(u.home)
	if err != nil || id.Name != "alice" || id.Server != srv.Addr || id.Fingerprint != srv.Fingerprint {
		t.Fatalf("identity after send --server --name: %+v, %v", id, err)
	}

	// The second time it needs neither flag, and nothing has changed.
	r = u.ok("send", src)
	if got := parseSummary(t, r.stdout); got != (sendCounts{unchanged: 1}) {
		t.Errorf("second send: %+v, want 1 unchanged", got)
	}
	if !regexp.MustCompile(`(?m)^unchanged +notes\.txt \(97\.7 KiB\)$`).MatchString(r.stdout) {
		t.Errorf("second send does not report notes.txt unchanged:\n%s", r.stdout)
	}
	// Nor with --checksum, which reads the content.
	r = u.ok("send", "-c", src)
	if got := parseSummary(t, r.stdout); got != (sendCounts{unchanged: 1}) {
		t.Errorf("send --checksum: %+v, want 1 unchanged", got)
	}
	// The same flags again are fine; another server or name is not.
	u.ok("send", "--server", srv.Addr, "--name", "alice", src)
	other := freeUDPAddr(t)
	checkFailure(t, u.run("send", "--server", other, src), 1, "holds the identity for "+srv.Addr, "not "+other, "--home")
	checkFailure(t, u.run("send", "--name", "bob", src), 1, `holds the identity "alice", not "bob"`, "--home")

	out := filepath.Join(t.TempDir(), "out")
	u.ok("restore", "notes.txt", "-o", out)
	assertSameFile(t, out, data)
}

func TestCLISendFailures(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	dir := t.TempDir()
	good := filepath.Join(dir, "good.bin")
	writeRandom(t, good, 5000, 1)

	t.Run("missing path among good ones", func(t *testing.T) {
		missing := filepath.Join(dir, "missing.bin")
		r := u.run("send", good, missing)
		checkFailure(t, r, 1, "1 file not stored", "cannot read "+missing, "no such file or directory")
		if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 1, failed: 1}) {
			t.Errorf("summary %+v, want 1 sent, 1 failed", got)
		}
		if !strings.Contains(r.stderr, "warning: cannot read "+missing+": no such file or directory\n") {
			t.Errorf("stderr does not warn about %s:\n%s", missing, r.stderr)
		}
		rows := parseLs(t, u.ok("ls").stdout)
		if len(rows) != 1 || rows[0].name != "good.bin" {
			t.Errorf("after the failed send ls shows %+v, want good.bin stored", rows)
		}
	})

	t.Run("unreadable file", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files of mode 000")
		}
		locked := filepath.Join(dir, "locked.bin")
		writeRandom(t, locked, 100, 2)
		if err := os.Chmod(locked, 0); err != nil {
			t.Fatal(err)
		}
		r := u.run("send", good, locked)
		checkFailure(t, r, 1, "locked.bin", "permission denied")
		if got := parseSummary(t, r.stdout); got.failed != 1 || got.sent+got.unchanged != 1 {
			t.Errorf("summary %+v, want good.bin stored and locked.bin failed", got)
		}
		if !regexp.MustCompile(`(?m)^FAILED +locked\.bin: .*permission denied$`).MatchString(r.stdout) {
			t.Errorf("stdout does not show locked.bin FAILED:\n%s", r.stdout)
		}
	})

	t.Run("one file is singular", func(t *testing.T) {
		r := u.run("send", good, filepath.Join(dir, "missing.bin"))
		checkFailure(t, r, 1, "1 file not stored")
	})

	t.Run("symlinks are backed up as links", func(t *testing.T) {
		tree := filepath.Join(dir, "tree")
		writeRandom(t, filepath.Join(tree, "real"), 10, 3)
		if err := os.Symlink("real", filepath.Join(tree, "link")); err != nil {
			t.Skip(err)
		}
		r := u.ok("send", tree)
		if got := parseSummary(t, r.stdout); got != (sendCounts{sent: 3}) {
			t.Errorf("summary %+v, want 3 sent (tree, link, real)", got)
		}
		out := filepath.Join(t.TempDir(), "out")
		u.ok("restore", "tree", "-o", out)
		if target, err := os.Readlink(filepath.Join(out, "link")); err != nil || target != "real" {
			t.Errorf("restored link: %q, %v; want a link to \"real\"", target, err)
		}
	})

	t.Run("nothing to send", func(t *testing.T) {
		checkFailure(t, u.run("send"), 2, "<paths>")
		checkFailure(t, u.run("send", "--progress", "fancy", good), 2, "--progress")
	})
}

func TestCLISendProgressLines(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	src := filepath.Join(t.TempDir(), "data")
	sizes := map[string]int{"a.txt": 0, "b.bin": 1, "sub/c.bin": 3*testChunk + 7, "sub/d e.bin": 2048}
	for name, size := range sizes {
		writeRandom(t, filepath.Join(src, filepath.FromSlash(name)), size, uint64(size))
	}
	for _, tc := range []struct {
		args   []string
		result string
		counts sendCounts
	}{
		{[]string{"send", "--progress=lines", src}, `stored v1`, sendCounts{sent: 6}}, // and data, data/sub
		{[]string{"send", "--progress", "lines", src}, `unchanged`, sendCounts{unchanged: 6}},
		{[]string{"send", src}, `unchanged`, sendCounts{unchanged: 6}}, // auto: not a terminal
	} {
		r := u.ok(tc.args...)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if want := fmt.Sprintf("sending %d files, ", entriesOf(sizes)+1); !strings.HasPrefix(lines[0], want) {
			t.Errorf("%v: first line %q, want %q...", tc.args, lines[0], want)
		}
		if len(lines) != entriesOf(sizes)+1+2 {
			t.Errorf("%v: %d lines, want a header, one line per file and directory (%d) and a summary:\n%s", tc.args, len(lines), entriesOf(sizes)+1, r.stdout)
		}
		for name, size := range sizes {
			re := regexp.MustCompile(`(?m)^` + tc.result + ` +data/` + regexp.QuoteMeta(name) + ` \(` + regexp.QuoteMeta(formatBytes(int64(size))) + `\)$`)
			if n := len(re.FindAllString(r.stdout, -1)); n != 1 {
				t.Errorf("%v: %d lines match %s, want 1", tc.args, n, re)
			}
		}
		if got := parseSummary(t, r.stdout); got != tc.counts {
			t.Errorf("%v: summary %+v, want %+v", tc.args, got, tc.counts)
		}
		if strings.Contains(r.stdout, "\x1b") || strings.Contains(r.stdout, "\r") {
			t.Errorf("%v: line output holds terminal control characters: %q", tc.args, r.stdout)
		}
	}
}

// ---------------------------------------------------------------------------
// ls

func TestCLILs(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")

	// Before anything is sent: the header alone.
	if r := u.ok("ls"); len(parseLs(t, r.stdout)) != 0 {
		t.Errorf("ls of nothing lists rows:\n%s", r.stdout)
	}

	src := filepath.Join(t.TempDir(), "data")
	sizes := map[string]int{"empty": 0, "one": 1, "chunk": testChunk, "sub/big.bin": 1<<20 + 1, "sub/x": 777}
	for name, size := range sizes {
		writeRandom(t, filepath.Join(src, filepath.FromSlash(name)), size, uint64(size)+1)
	}
	before := time.Now().Add(-time.Second)
	u.ok("send", src)

	r := u.ok("ls")
	checkClean(t, "stdout", r.stdout)
	rows := parseLs(t, r.stdout)
	if len(rows) != entriesOf(sizes)+1 {
		t.Fatalf("ls lists %d rows, want %d (and data, data/sub):\n%s", len(rows), entriesOf(sizes)+1, r.stdout)
	}
	var names []string
	for _, row := range rows {
		names = append(names, row.name)
		if row.name == "data" || row.name == "data/sub" {
			if !strings.HasPrefix(row.mode, "d") || row.size != "0" {
				t.Errorf("ls row %+v: want a directory of size 0", row)
			}
			continue
		}
		if !strings.HasPrefix(row.mode, "-") {
			t.Errorf("ls row %+v: mode does not say a regular file", row)
		}
		rel, ok := strings.CutPrefix(row.name, "data/")
		size, known := sizes[rel]
		if !ok || !known {
			t.Errorf("ls lists %q, which was never sent", row.name)
			continue
		}
		ck := strings.Fields(fileCksum(t, filepath.Join(src, filepath.FromSlash(rel))))
		if row.size != strconv.Itoa(size) || row.size != ck[1] || row.version != "1" || row.versions != "1" || row.cksum != ck[0] || row.verified != "yes" {
			t.Errorf("ls row %+v; want size %d, version 1 of 1, cksum %s (coreutils), verified yes", row, size, ck[0])
		}
		stored, err := time.ParseInLocation("2006-01-02 15:04:05", row.stored, time.Local)
		if err != nil || stored.Before(before) || stored.After(time.Now().Add(time.Second)) {
			t.Errorf("ls %s: stored %q (%v), want a local time of about now", row.name, row.stored, err)
		}
	}
	if !sort.StringsAreSorted(names) {
		t.Errorf("ls rows are not sorted by name: %v", names)
	}

	// A prefix lists a file or what lies below a directory.
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"data/sub", []string{"data/sub", "data/sub/big.bin", "data/sub/x"}},
		{"data/one", []string{"data/one"}},
		{"data/on", nil},
		{"nothing", nil},
	} {
		var got []string
		for _, row := range parseLs(t, u.ok("ls", tc.prefix).stdout) {
			got = append(got, row.name)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("ls %s lists %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

func TestCLILsVersions(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	dir := t.TempDir()
	f := filepath.Join(dir, "notes.txt")
	var cks []string
	for i, size := range []int{3000, 2000, 4000} {
		writeRandom(t, f, size, uint64(i+1))
		cks = append(cks, fileCksum(t, f))
		u.ok("send", f)
	}
	writeRandom(t, filepath.Join(dir, "other"), 10, 9)
	u.ok("send", filepath.Join(dir, "other"))

	for _, flag := range []string{"--versions", "-a"} {
		rows := parseLs(t, u.ok("ls", flag, "notes.txt").stdout)
		if len(rows) != 3 {
			t.Fatalf("ls %s notes.txt lists %d rows, want 3", flag, len(rows))
		}
		for i, row := range rows {
			ck := strings.Fields(cks[i])
			if row.name != "notes.txt" || row.version != strconv.Itoa(i+1) || row.versions != "3" || row.cksum != ck[0] || row.size != ck[1] || row.verified != "yes" {
				t.Errorf("ls %s row %d = %+v, want version %d of 3, cksum %s, size %s", flag, i, row, i+1, ck[0], ck[1])
			}
		}
	}
	rows := parseLs(t, u.ok("ls", "notes.txt").stdout)
	if len(rows) != 1 || rows[0].version != "3" || rows[0].versions != "3" {
		t.Errorf("ls notes.txt = %+v, want the latest, version 3 of 3", rows)
	}
	if rows := parseLs(t, u.ok("ls", "--versions").stdout); len(rows) != 4 {
		t.Errorf("ls --versions lists %d rows, want 4", len(rows))
	}
}

// ---------------------------------------------------------------------------
// restore

func TestCLIRestore(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	src := filepath.Join(t.TempDir(), "data")
	makeTree(t, src)
	u.ok("send", src)
	f := filepath.Join(t.TempDir(), "f.bin")
	v1 := writeRandom(t, f, 150000, 1)
	u.ok("send", f)
	v2 := writeRandom(t, f, 120000, 2)
	u.ok("send", f)
	out := t.TempDir()
	restoredRE := regexp.MustCompile(`(?m)^(\d+) restored, (\d+) identical, (\d+) failed; \S+ (?:B|[KMGTP]iB)$`)

	t.Run("one file", func(t *testing.T) {
		dest := filepath.Join(out, "big")
		r := u.ok("restore", "data/big", "-o", dest)
		big, _ := os.ReadFile(filepath.Join(src, "big"))
		assertSameFile(t, dest, big)
		if m := restoredRE.FindStringSubmatch(r.stdout); m == nil || m[1] != "1" || m[2] != "0" || m[3] != "0" {
			t.Errorf("stdout %q, want \"1 restored, 0 identical, 0 failed; ...\"", r.stdout)
		}
		if !regexp.MustCompile(`(?m)^restored +data/big \(3\.0 MiB\)$`).MatchString(r.stdout) {
			t.Errorf("stdout does not report data/big restored:\n%s", r.stdout)
		}
	})

	t.Run("directory", func(t *testing.T) {
		for i, name := range []string{"data", "data/"} {
			dest := filepath.Join(out, fmt.Sprintf("tree%d", i))
			r := u.ok("restore", name, "-o", dest)
			assertSameTree(t, dest, src)
			if m := restoredRE.FindStringSubmatch(r.stdout); m == nil || m[1] != "13" || m[2] != "0" || m[3] != "0" {
				t.Errorf("restore %s: stdout %q, want \"13 restored (10 files, 3 directories), 0 identical, 0 failed; ...\"", name, r.stdout)
			}
		}
		dest := filepath.Join(out, "sub")
		u.ok("restore", "data/sub", "--output", dest)
		assertSameTree(t, dest, filepath.Join(src, "sub"))
	})

	t.Run("versions", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want []byte
		}{
			{[]string{"--version", "1"}, v1},
			{[]string{"--version=2"}, v2},
			{nil, v2},
		} {
			dest := filepath.Join(t.TempDir(), "f")
			u.ok(append([]string{"restore", "f.bin", "-o", dest}, tc.args...)...)
			assertSameFile(t, dest, tc.want)
		}
		checkFailure(t, u.run("restore", "data", "--version", "1", "-o", filepath.Join(t.TempDir(), "x")), 1, "--version", "directory")
		r := u.run("restore", "f.bin", "--version", "7", "-o", filepath.Join(t.TempDir(), "x"))
		checkFailure(t, r, 1)
		if !strings.Contains(r.stderr, "has no version 7") {
			t.Errorf("restore --version 7 of a file with 2 versions does not say the version is missing:\n%v", r)
		}
	})

	t.Run("existing file", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(dest, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := u.run("restore", "f.bin", "-o", dest)
		checkFailure(t, r, ExitIncomplete)
		if !strings.Contains(r.stdout+r.stderr, "--overwrite") {
			t.Errorf("restore onto an existing file does not mention --overwrite:\n%v", r)
		}
		if b, _ := os.ReadFile(dest); string(b) != "precious" {
			t.Errorf("restore without --overwrite changed the existing file")
		}
		u.ok("restore", "f.bin", "-o", dest, "--overwrite")
		assertSameFile(t, dest, v2)
	})

	t.Run("the error line says why", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "f")
		os.WriteFile(dest, []byte("precious"), 0o644)
		checkFailure(t, u.run("restore", "f.bin", "-o", dest), ExitIncomplete, "exists and differs", "--overwrite")
		msg := checkFailure(t, u.run("restore", "f.bin", "--version", "7", "-o", filepath.Join(t.TempDir(), "x")), 1, "version 7")
		if strings.Contains(msg, "proto:") {
			t.Errorf("error %q names the Go package proto", msg)
		}
	})

	t.Run("unknown name", func(t *testing.T) {
		for _, name := range []string{"nope", "dat", "data/bi", "f.bin/x"} {
			checkFailure(t, u.run("restore", name, "-o", filepath.Join(t.TempDir(), "x")), 1, fmt.Sprintf("nothing named %q", name), "qbackup ls")
		}
	})

	t.Run("no name", func(t *testing.T) {
		checkFailure(t, u.run("restore"), 2, "<name>")
	})
}

// TestCLIRestoreToCurrentDirectory covers restore without -o. It changes
// directory, so it does not run in parallel.
func TestCLIRestoreToCurrentDirectory(t *testing.T) {
	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	src := filepath.Join(t.TempDir(), "docs")
	a := writeRandom(t, filepath.Join(src, "a.txt"), 1000, 1)
	b := writeRandom(t, filepath.Join(src, "deep", "b.txt"), 2000, 2)
	u.ok("send", src)
	cwd := t.TempDir()
	t.Chdir(cwd)
	u.ok("restore", "docs/deep/b.txt")
	assertSameFile(t, filepath.Join(cwd, "b.txt"), b)
	u.ok("restore", "docs")
	assertSameFile(t, filepath.Join(cwd, "docs", "a.txt"), a)
	assertSameFile(t, filepath.Join(cwd, "docs", "deep", "b.txt"), b)
	// Again: everything is there as stored, so nothing is fetched and
	// the restore succeeds.
	r := u.ok("restore", "docs")
	if n := strings.Count(r.stdout, "identical "); n != 4 || !strings.Contains(r.stdout, "0 restored, 4 identical, 0 failed") {
		t.Errorf("restoring docs again reports %d identical files, want 4 (2 files, 2 directories):\n%s", n, r.stdout)
	}
	// A file that differs is kept without --overwrite (exit 3), and
	// replaced with it.
	if err := os.WriteFile(filepath.Join(cwd, "docs", "a.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = u.run("restore", "docs")
	checkFailure(t, r, ExitIncomplete, "skipped")
	if !strings.Contains(r.stderr, "it exists and differs from the stored file; use --overwrite") {
		t.Errorf("restore over a changed file: stderr %q does not say why it was kept", r.stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(cwd, "docs", "a.txt")); string(got) != "mine" {
		t.Errorf("a changed file was replaced without --overwrite")
	}
	u.ok("restore", "docs", "--overwrite")
	assertSameFile(t, filepath.Join(cwd, "docs", "a.txt"), a)
}

// ---------------------------------------------------------------------------
// messages, help, environment

// TestCLIErrorMessages collects failures not covered above and checks that
// each ends in one clean line.
func TestCLIErrorMessages(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := testContext(t)
	f := filepath.Join(t.TempDir(), "f")
	writeRandom(t, f, 10, 1)

	// registered returns the home of a newly registered user.
	registered := func(t *testing.T) string {
		u := newCLIUser(t)
		u.register(srv, "u"+strconv.Itoa(rand.IntN(1<<30)))
		return u.home
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, home string) // may break the home
		args  []string
		code  int
		want  []string
	}{
		{"unknown command", nil, []string{"frobnicate"}, 2, []string{"unexpected argument frobnicate"}},
		{"no command", nil, nil, 2, []string{`"register"`, `"send"`}},
		{"unknown flag", nil, []string{"ls", "--bogus"}, 2, []string{"unknown flag --bogus"}},
		{"bad number", nil, []string{"send", "--files", "many", f}, 2, []string{"--files"}},
		{"damaged identity", func(t *testing.T, home string) {
			os.WriteFile(filepath.Join(home, identityFile), []byte("{not json"), 0o600)
		}, []string{"ls"}, 1, []string{identityFile, "is damaged", "register again"}},
		{"empty identity", func(t *testing.T, home string) {
			os.WriteFile(filepath.Join(home, identityFile), nil, 0o600)
		}, []string{"send", f}, 1, []string{identityFile, "is damaged"}},
		{"malformed client ID", func(t *testing.T, home string) {
			os.WriteFile(filepath.Join(home, identityFile), []byte(`{"server":"x:1","name":"a","client_id":"zz","fingerprint":""}`), 0o600)
		}, []string{"ls"}, 1, []string{"malformed client ID"}},
		{"key readable by others", func(t *testing.T, home string) {
			os.Chmod(filepath.Join(home, keyFile), 0o644)
		}, []string{"ls"}, 1, []string{keyFile, "chmod 600"}},
		{"key is not PEM", func(t *testing.T, home string) {
			os.WriteFile(filepath.Join(home, keyFile), []byte("hello"), 0o600)
		}, []string{"ls"}, 1, []string{keyFile, "no PEM key"}},
		{"key missing", func(t *testing.T, home string) {
			os.Remove(filepath.Join(home, keyFile))
		}, []string{"ls"}, 1, []string{"private key"}},
		{"unknown to the server", func(t *testing.T, home string) {
			id, err := loadIdentity(home)
			if err != nil {
				t.Fatal(err)
			}
			id.ClientID = strings.Repeat("ab", 16)
			if err := id.save(home); err != nil {
				t.Fatal(err)
			}
		}, []string{"ls"}, 1, []string{"reconnect rejected", "qbackup register"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var home string
			if tc.setup != nil {
				home = registered(t)
				tc.setup(t, home)
			} else {
				home = filepath.Join(t.TempDir(), "home")
			}
			r := runMain(t, ctx, nil, append([]string{"--home", home}, tc.args...)...)
			checkFailure(t, r, tc.code, tc.want...)
			if tc.code == 2 && r.stdout != "" {
				t.Errorf("a usage error printed to stdout: %q", r.stdout)
			}
		})
	}
}

func TestCLIHelp(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	commands := []string{"register", "send", "ls", "restore", "cksum"}
	for _, args := range [][]string{{"--help"}, {"-h"}} {
		r := runMain(t, ctx, nil, args...)
		if r.code != 0 {
			t.Errorf("qbackup %v: exit %d, want 0", args, r.code)
		}
		for _, c := range commands {
			if !regexp.MustCompile(`(?m)^  ` + c + `\b`).MatchString(r.stdout) {
				t.Errorf("qbackup %v does not list the command %s:\n%s", args, c, r.stdout)
			}
		}
		if strings.Contains(r.stdout, "key-bits") {
			t.Errorf("qbackup %v shows the hidden --key-bits flag", args)
		}
		if r.stderr != "" {
			t.Errorf("qbackup %v wrote to stderr: %q", args, r.stderr)
		}
	}
	for _, tc := range []struct {
		cmd   string
		flags []string
	}{
		{"register", []string{"--server", "--name", "--fingerprint"}},
		{"send", []string{"--checksum", "--files", "--progress", "--server", "--name"}},
		{"ls", []string{"--versions"}},
		{"restore", []string{"--output", "--version", "--overwrite", "--progress"}},
		{"cksum", nil},
	} {
		r := runMain(t, ctx, nil, tc.cmd, "--help")
		if r.code != 0 {
			t.Errorf("qbackup %s --help: exit %d, want 0", tc.cmd, r.code)
		}
		if !strings.HasPrefix(r.stdout, "Usage: qbackup "+tc.cmd) {
			t.Errorf("qbackup %s --help starts %q", tc.cmd, r.stdout[:min(len(r.stdout), 40)])
		}
		for _, f := range tc.flags {
			if !strings.Contains(r.stdout, f) {
				t.Errorf("qbackup %s --help does not mention %s", tc.cmd, f)
			}
		}
	}
}

// TestCLIHomeFromEnvironment sets environment variables, so it does not
// run in parallel.
func TestCLIHomeFromEnvironment(t *testing.T) {
	srv := startServer(t)
	ctx := testContext(t)
	reg := func(t *testing.T, name string, extra ...string) cliResult {
		t.Helper()
		args := append(extra, "--key-bits", "2048", "register", "--server", srv.Addr, "--name", name, "--fingerprint", srv.Fingerprint)
		r := runMain(t, ctx, nil, args...)
		if r.code != 0 {
			t.Fatalf("register: exit %d: %s", r.code, r.stderr)
		}
		return r
	}
	hasIdentity := func(t *testing.T, home, name string) {
		t.Helper()
		id, err := loadIdentity(home)
		if err != nil || id.Name != name {
			t.Errorf("identity in %s: %+v, %v; want %q's", home, id, err, name)
		}
	}
	unset := func(t *testing.T, key string) {
		t.Setenv(key, "") // restored after the test
		os.Unsetenv(key)
	}

	t.Run("QBACKUP_HOME", func(t *testing.T) {
		home := filepath.Join(t.TempDir(), "qhome")
		t.Setenv("QBACKUP_HOME", home)
		reg(t, "alice")
		hasIdentity(t, home, "alice")
		// Later commands find it there too.
		r := runMain(t, ctx, nil, "ls")
		if r.code != 0 {
			t.Errorf("ls with QBACKUP_HOME: exit %d: %s", r.code, r.stderr)
		}
		// --home wins over the environment.
		other := filepath.Join(t.TempDir(), "other")
		reg(t, "bob", "--home", other)
		hasIdentity(t, other, "bob")
		hasIdentity(t, home, "alice")
		// The error for a missing identity names the home in use.
		t.Setenv("QBACKUP_HOME", filepath.Join(t.TempDir(), "empty"))
		checkFailure(t, runMain(t, ctx, nil, "ls"), 1, "no identity in "+filepath.Join(os.Getenv("QBACKUP_HOME")))
	})

	t.Run("XDG_CONFIG_HOME", func(t *testing.T) {
		unset(t, "QBACKUP_HOME")
		xdg := t.TempDir()
		t.Setenv("XDG_CONFIG_HOME", xdg)
		if got, err := DefaultHome(); got != filepath.Join(xdg, "qbackup") || err != nil {
			t.Errorf("DefaultHome() = %q, %v with XDG_CONFIG_HOME=%s, want %q", got, err, xdg, filepath.Join(xdg, "qbackup"))
		}
		reg(t, "carol")
		hasIdentity(t, filepath.Join(xdg, "qbackup"), "carol")
	})

	t.Run("HOME", func(t *testing.T) {
		unset(t, "QBACKUP_HOME")
		unset(t, "XDG_CONFIG_HOME")
		h := t.TempDir()
		t.Setenv("HOME", h)
		if got, err := DefaultHome(); got != filepath.Join(h, ".config", "qbackup") || err != nil {
			t.Errorf("DefaultHome() = %q, %v with HOME=%s, want %q", got, err, h, filepath.Join(h, ".config", "qbackup"))
		}
		reg(t, "dave")
		hasIdentity(t, filepath.Join(h, ".config", "qbackup"), "dave")
	})
}

// ---------------------------------------------------------------------------
// progress bars on a terminal

// TestCLIProgressBarsOnTerminal runs the built qbackup in a tmux pane, the
// way a user sees it, and watches the screen while it sends a 30 MiB file.
func TestCLIProgressBarsOnTerminal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and drives tmux")
	}
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("tmux is not installed")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "qbackup")
	start := time.Now()
	if out, err := exec.CommandContext(ctx, gobin, "build", "-o", bin, "./cmd/qbackup").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built qbackup in %v", time.Since(start))

	srv := startServer(t)
	u := newCLIUser(t)
	u.register(srv, "alice")
	file := filepath.Join(dir, "big.bin")
	writeFast(t, file, 30<<20, 1)

	sock := filepath.Join(dir, "tmux.sock") // a tmux server of our own
	tm := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, tmux, append([]string{"-S", sock, "-f", "/dev/null"}, args...)...)
		cmd.Env = append(os.Environ(), "TERM=xterm-256color")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	script := fmt.Sprintf("%s --home %s send %s; echo EXIT=$?; sleep 60", shellQuote(bin), shellQuote(u.home), shellQuote(file))
	if out, err := tm("new-session", "-d", "-s", "qb", "-x", "120", "-y", "30", "sh", "-c", script); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	t.Cleanup(func() { tm("kill-server") })

	var screens []string
	var final string
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := tm("capture-pane", "-p", "-t", "qb")
		if err != nil {
			t.Fatalf("tmux capture-pane: %v\n%s", err, s)
		}
		if strings.Contains(s, "EXIT=") {
			final = s
			break
		}
		screens = append(screens, s)
		if time.Now().After(deadline) {
			t.Fatalf("qbackup send did not finish within 20s; the screen shows:\n%s", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("final screen:\n%s", final)

	if !strings.Contains(final, "EXIT=0") {
		t.Errorf("qbackup send exited non-zero:\n%s", final)
	}
	if !regexp.MustCompile(`(?m)^1 sent, 0 unchanged, 0 failed; 30\.0 MiB in `).MatchString(final) {
		t.Errorf("the final screen has no summary \"1 sent, 0 unchanged, 0 failed; 30.0 MiB in ...\":\n%s", final)
	}
	totalRE := regexp.MustCompile(`total \(1 file\) +30\.0 MiB / 30\.0 MiB .*done`)
	if !totalRE.MatchString(final) {
		t.Errorf("the final screen has no completed total bar (%s) on one line:\n%s", totalRE, final)
	}
	drawn := 0
	for _, s := range append(screens, final) {
		if strings.Contains(s, "total (1 file)") {
			drawn++
		}
	}
	if drawn == 0 {
		t.Errorf("no screen showed the total bar \"total (1 file)\"")
	}
	// The file's own bar is removed once the file is done.
	if regexp.MustCompile(`(?m)^big\.bin +[\d.]+ \S+ / `).MatchString(final) {
		t.Errorf("the final screen still shows big.bin's bar:\n%s", final)
	}
	for _, l := range strings.Split(final, "\n") {
		if len([]rune(l)) > 120 {
			t.Errorf("line wider than the 120-column pane: %q", l)
		}
	}
	t.Logf("%d screens captured during the send, %d with the total bar; %v in all", len(screens), drawn, time.Since(start))

	t.Run("the result line stays", func(t *testing.T) {
		if !regexp.MustCompile(`(?m)^stored v1 +big\.bin \(30\.0 MiB\)$`).MatchString(final) {
			t.Errorf("the final screen does not report big.bin stored:\n%s", final)
		}
	})

	t.Run("the total shows a speed", func(t *testing.T) {
		speedRE := regexp.MustCompile(`(?m)^total \(1 file\) .*\] +([\d.]+) (?:b|KiB|MiB|GiB)/s`)
		moving := false
		for _, s := range screens {
			if m := speedRE.FindStringSubmatch(s); m != nil && m[1] != "0.0" {
				moving = true
			}
		}
		if !moving {
			t.Errorf("no screen showed the total moving at a speed above 0.0 b/s")
		}
	})

	// Ctrl-C in the middle of a send over a slow link: exit 130, the bars
	// left as they were (the total not drawn complete), and the advice to
	// run the command again.
	t.Run("ctrl-c", func(t *testing.T) {
		p := startUDPProxy(t, srv.Addr, 11)
		p.SetRate(toServer, 4<<20) // 30 MiB take 7 s
		slow := newCLIUser(t)
		slow.ok("register", "--server", p.Addr(), "--name", "bob", "--fingerprint", srv.Fingerprint)
		// The shell catches the interrupt (trap), so that it lives on to
		// print the status; qbackup gets it as from a terminal.
		script := fmt.Sprintf("trap : INT; %s --home %s send %s; echo EXIT=$?; sleep 60", shellQuote(bin), shellQuote(slow.home), shellQuote(file))
		if out, err := tm("new-session", "-d", "-s", "qb2", "-x", "120", "-y", "30", "sh", "-c", script); err != nil {
			t.Fatalf("tmux new-session: %v\n%s", err, out)
		}
		movingRE := regexp.MustCompile(`total \(1 file\) +([1-9][\d.]*) MiB / 30\.0 MiB`)
		var s string
		for deadline := time.Now().Add(20 * time.Second); !movingRE.MatchString(s); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the slow send never showed progress:\n%s", s)
			}
			s, _ = tm("capture-pane", "-p", "-t", "qb2")
		}
		if out, err := tm("send-keys", "-t", "qb2", "C-c"); err != nil {
			t.Fatalf("tmux send-keys: %v\n%s", err, out)
		}
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s, "EXIT="); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the send did not end after Ctrl-C:\n%s", s)
			}
			s, _ = tm("capture-pane", "-p", "-t", "qb2")
		}
		t.Logf("screen after Ctrl-C:\n%s", s)
		if !strings.Contains(s, "EXIT=130") || !strings.Contains(s, "interrupted; run the same command again to resume") {
			t.Errorf("Ctrl-C: want exit 130 and the advice to run the send again:\n%s", s)
		}
		if strings.Contains(s, "30.0 MiB / 30.0 MiB") || !movingRE.MatchString(s) {
			t.Errorf("after Ctrl-C the total bar is not left where it was:\n%s", s)
		}
	})
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

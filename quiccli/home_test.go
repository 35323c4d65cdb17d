package quiccli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// unsetenv unsets key for the rest of the test (t.Setenv restores it), so
// the test must not run in parallel.
func unsetenv(t *testing.T, key string) {
	t.Setenv(key, "")
	os.Unsetenv(key)
}

// TestDefaultHome: the home comes from XDG_CONFIG_HOME, else from HOME; with
// neither (a relative XDG_CONFIG_HOME counts as none, as the XDG base
// directory specification says) there is none, rather than one relative to
// the current directory. Sets environment variables: not parallel.
func TestDefaultHome(t *testing.T) {
	abs := t.TempDir()
	for _, tc := range []struct {
		name      string
		xdg, home string // "" unsets
		want      string // "" wants an error
	}{
		{"XDG_CONFIG_HOME", abs, "/home/u", filepath.Join(abs, "qbackup")},
		{"HOME", "", "/home/u", "/home/u/.config/qbackup"},
		{"relative XDG_CONFIG_HOME", "conf", "/home/u", "/home/u/.config/qbackup"},
		{"neither", "", "", ""},
		{"relative XDG_CONFIG_HOME and no HOME", "conf", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for key, v := range map[string]string{"XDG_CONFIG_HOME": tc.xdg, "HOME": tc.home} {
				if v == "" {
					unsetenv(t, key)
				} else {
					t.Setenv(key, v)
				}
			}
			got, err := DefaultHome()
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), "--home DIR") || !strings.Contains(err.Error(), "QBACKUP_HOME") {
					t.Errorf("DefaultHome() = %q, %v; want an error naming --home DIR and QBACKUP_HOME", got, err)
				}
				return
			}
			if got != tc.want || err != nil {
				t.Errorf("DefaultHome() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestCLINoHome: with neither QBACKUP_HOME, XDG_CONFIG_HOME nor HOME, the
// commands that keep an identity fail at once with an error that says to
// give --home or set QBACKUP_HOME, and leave nothing in the current
// directory; cksum needs no home and works. Sets environment variables:
// not parallel.
func TestCLINoHome(t *testing.T) {
	for _, key := range []string{"QBACKUP_HOME", "XDG_CONFIG_HOME", "HOME"} {
		unsetenv(t, key)
	}
	cwd := t.TempDir()
	t.Chdir(cwd)
	ctx := testContext(t)
	addr := freeUDPAddr(t) // never dialled: the home is missing first

	for _, args := range [][]string{
		{"register", "--server", addr, "--name", "alice"},
		{"send", "--server", addr, "--name", "alice", "f"},
		{"send", cwd},
		{"ls"},
		{"restore", "f"},
	} {
		r := runMain(t, ctx, nil, append([]string{"--key-bits", "2048"}, args...)...)
		checkFailure(t, r, 1, "--home DIR", "QBACKUP_HOME")
	}
	if ents, err := os.ReadDir(cwd); err != nil || len(ents) != 0 {
		t.Errorf("the current directory holds %v (%v), want nothing", ents, err)
	}

	if r := runMain(t, ctx, strings.NewReader("data"), "cksum"); r.code != 0 || r.stdout != "3390903480 4\n" {
		t.Errorf("cksum without a home: exit %d, stdout %q; want 0 and \"3390903480 4\\n\"", r.code, r.stdout)
	}
	// --home is enough.
	home := filepath.Join(t.TempDir(), "home")
	checkFailure(t, runMain(t, ctx, nil, "--home", home, "ls"), 1, "no identity in "+home)
}

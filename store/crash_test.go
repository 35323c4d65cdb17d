package store

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const crashDirEnv = "QBACKUP_STORE_CRASH_DIR"

// TestCrashKill kills a process in the middle of concurrent uploads,
// commits, discards, checkpoints and releases, reopens the store, and
// checks that the database and the files agree: every version's file
// exists with the recorded size and SHA-256, nothing unreferenced is left
// under clients/ or tmp/, and every checkpoint's blob describes bytes that
// are in its temp file.
func TestCrashKill(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("kills child processes")
	}
	dir := t.TempDir()
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill$")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(300+100*round) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()

		s, err := Open(t.Context(), dir)
		if err != nil {
			t.Fatalf("round %d: Open after kill: %v", round, err)
		}
		checkConsistent(t, s)
		checkUsage(t, s)
		n := checkCheckpoints(t, s)
		t.Logf("round %d: recovered %+v, %d checkpointed uploads", round, s.Recovered(), n)
		s.Close()
	}
}

// crashChild uploads until killed.
func crashChild(dir string) {
	ctx := context.Background()
	s, err := Open(ctx, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	c, _, err := s.RegisterClient(ctx, fmt.Sprintf("crash-%d", os.Getpid()), newKeyNoT())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("g%d/f%d", g, i%5)
				data := make([]byte, 1000+rand.IntN(50000))
				for j := range data {
					data[j] = byte(rand.Uint32())
				}
				u, err := s.NewUpload(ctx, c.ID, name, int64(len(data)), time.Now(), 0o644)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(2)
				}
				switch i % 7 {
				case 3:
					u.WriteAt(data, 0)
					u.Discard(ctx)
					continue
				case 5, 6:
					// Keep it for resume, checkpointing half of it.
					half := len(data) / 2
					u.WriteAt(data[:half], 0)
					if err := u.Checkpoint(ctx, resumeBlob(half, sha256.Sum256(data[:half]))); err != nil {
						fmt.Fprintln(os.Stderr, "child:", err)
						os.Exit(2)
					}
					u.WriteAt(data[half:], int64(half))
					if i%7 == 5 {
						u.Release()
						continue
					}
				default:
					u.WriteAt(data, 0)
				}
				crc, sha := sums(data)
				if _, _, err := u.Commit(ctx, crc, sha); err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(2)
				}
			}
		})
	}
	wg.Wait()
}

func newKeyNoT() []byte {
	pub, _, err := ed25519.GenerateKey(nil)
	var der []byte
	if err == nil {
		der, err = x509.MarshalPKIXPublicKey(pub)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: key:", err)
		os.Exit(2)
	}
	return der
}

// checkConsistent verifies that database and files agree.
func checkConsistent(t *testing.T, s *Store) {
	t.Helper()
	ctx := t.Context()
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := s.db.QueryContext(ctx, "SELECT client_id, name, version FROM files")
	if err != nil {
		t.Fatal(err)
	}
	type ver struct {
		id      ClientID
		name    string
		version int
	}
	var vers []ver
	for rows.Next() {
		var v ver
		var id []byte
		if err := rows.Scan(&id, &v.name, &v.version); err != nil {
			t.Fatal(err)
		}
		copy(v.id[:], id)
		vers = append(vers, v)
	}
	rows.Close()
	for _, v := range vers {
		fv, err := s.Version(ctx, v.id, v.name, v.version)
		if err != nil {
			t.Fatal(err)
		}
		f, err := s.OpenVersion(ctx, v.id, fv)
		if err != nil {
			t.Errorf("version %q %d: %v", v.name, v.version, err)
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil || n != fv.Size || [32]byte(h.Sum(nil)) != fv.SHA256 {
			t.Errorf("version %q %d: %d bytes, %v, SHA-256 match %v; want %d bytes, matching", v.name, v.version, n, err, [32]byte(h.Sum(nil)) == fv.SHA256, fv.Size)
		}
	}
	files := 0
	filepath.WalkDir(filepath.Join(s.Dir(), clientsDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return err
	})
	if files != len(vers) {
		t.Errorf("%d files under clients/, want %d (one per version)", files, len(vers))
	}
	var uploads int
	s.db.QueryRowContext(ctx, "SELECT count(*) FROM uploads").Scan(&uploads)
	entries, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if len(entries) != uploads {
		t.Errorf("%d temp files, want %d (one per upload row)", len(entries), uploads)
	}
	t.Logf("%d versions, %d pending uploads", len(vers), uploads)
}

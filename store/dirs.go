package store

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
)

// Open directory handles. Every os.Root call resolves its path one
// component at a time (an openat and a close per directory), so a commit
// of a file four directories down cost a dozen system calls to check and
// move it into place, in the batcher's single goroutine. With the
// directories held open, a commit is one renameat2(RENAME_NOREPLACE) from
// tmp/ into the version's directory, and a new upload one openat in tmp/.
// The handles are opened through the root, so they are inside the store;
// the names used relative to them are single components that names.go
// built and checked. Where the fast calls are missing (other systems, or a
// file system without RENAME_NOREPLACE) the os.Root way is used.

// maxDirHandles bounds the directory handles a Store keeps open.
const maxDirHandles = 256

// dirCache holds open directories by store-relative, slash-separated
// path, least recently used first out. Only the batcher uses it.
type dirCache struct {
	root  *os.Root
	max   int
	m     map[string]*list.Element // of *dirHandle
	order list.List                // front: most recently used
}

type dirHandle struct {
	rel string
	f   *os.File
}

func newDirCache(root *os.Root, max int) *dirCache {
	return &dirCache{root: root, max: max, m: make(map[string]*list.Element)}
}

// open returns the directory rel, creating it and its parents as needed
// (see mkdirAll).
func (c *dirCache) open(rel string) (*os.File, error) {
	if e, ok := c.m[rel]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*dirHandle).f, nil
	}
	if err := mkdirAll(c.root, rel); err != nil {
		return nil, err
	}
	f, err := c.root.Open(filepath.FromSlash(rel))
	if err != nil {
		return nil, wrapIO("open directory", err)
	}
	c.m[rel] = c.order.PushFront(&dirHandle{rel: rel, f: f})
	for c.order.Len() > c.max {
		c.remove(c.order.Back())
	}
	return f, nil
}

// drop forgets rel, whose handle may no longer name a live directory.
func (c *dirCache) drop(rel string) {
	if e, ok := c.m[rel]; ok {
		c.remove(e)
	}
}

func (c *dirCache) remove(e *list.Element) {
	h := c.order.Remove(e).(*dirHandle)
	delete(c.m, h.rel)
	h.f.Close()
}

func (c *dirCache) closeAll() {
	for c.order.Len() > 0 {
		c.remove(c.order.Back())
	}
}

// moveIntoPlace renames the temp file temp to rel (both store-relative),
// creating rel's directories as needed, and never replaces anything at
// rel: that fails with an error that says why. It runs in the batcher.
func (s *Store) moveIntoPlace(temp, rel string) error {
	dir := path.Dir(rel)
	if haveRenameNoReplace && !s.noRenameNoReplace {
		d, err := s.dirs.open(dir)
		if err != nil {
			return err
		}
		err = renameNoReplace(s.tmp, path.Base(temp), d, path.Base(rel))
		switch {
		case err == nil:
			return nil
		case errors.Is(err, fs.ErrExist):
			return existsError(rel)
		case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.ENOTSUP):
			s.noRenameNoReplace = true // this file system cannot: the slow way from now on
		case errors.Is(err, fs.ErrNotExist):
			s.dirs.drop(dir) // perhaps removed behind our back: try by path
		default:
			return wrapIO("move upload into place", err)
		}
	}
	if err := mkdirAll(s.root, dir); err != nil {
		return err
	}
	osRel := filepath.FromSlash(rel)
	if _, err := s.root.Lstat(osRel); err == nil {
		return existsError(rel)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return wrapIO("check version file", err)
	}
	if err := s.root.Rename(filepath.FromSlash(temp), osRel); err != nil {
		return wrapIO("move upload into place", err)
	}
	return nil
}

// existsError: only a crash leftover (removed at Open) or a file system
// that folds case or normalises Unicode could put a file where a new
// version goes, and the latter would make two names share one file.
func existsError(rel string) error {
	return fmt.Errorf("store: %s already exists; is the filesystem case-insensitive or normalising names?", rel)
}

// createTemp creates the temp file temp (store-relative, in tmp/), which
// must not exist, open for reading and writing.
func (s *Store) createTemp(temp string) (*os.File, error) {
	if haveOpenIn {
		f, err := openCreateIn(s.tmp, path.Base(temp), s.dir+"/"+temp)
		if err != nil {
			return nil, wrapIO("create temp file", err)
		}
		return f, nil
	}
	f, err := s.root.OpenFile(filepath.FromSlash(temp), os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return nil, wrapIO("create temp file", err)
	}
	return f, nil
}

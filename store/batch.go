package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
)

// Group commit. Committing an upload ends in a durable database
// transaction and in directory fsyncs; alone, each would cost a few
// fsyncs, so a tree of small files would spend its time waiting for the
// disk one file at a time. Instead commits queue for one goroutine, which
// runs everything queued in one transaction (each in a savepoint of its
// own, so one failing does not fail the others), syncs each directory the
// batch touched once (or the file system once, for small files), and
// commits once. While a batch waits for the disk the next one gathers, so
// the more files arrive at once, the fewer fsyncs each costs. Nothing is
// acknowledged before the transaction holding it is durable.

// maxBatch bounds the operations in one transaction.
const maxBatch = 256

// batchOp is one write run in a batch.
type batchOp struct {
	// run does the write within tx (inside a savepoint). It may rename
	// files into place, and then names their directories in b.dirs so
	// they are synced before the transaction commits; if it fails, it
	// undoes its own renames first.
	run func(ctx context.Context, tx *sql.Tx, b *batch) error
	// undo reverses what a successful run did outside the database, for
	// a batch that does not commit. May be nil.
	undo func()
	// committed reports, after a COMMIT that failed, whether this op's
	// effect is in the database after all. May be nil (never committed).
	committed func(ctx context.Context, db *sql.DB) (bool, error)
	// after runs once the batch committed. May be nil.
	after func()

	err  error
	done chan struct{}
}

// batch is what the ops of one transaction share.
type batch struct {
	dirs   map[string]bool // directories (store-relative, '/') to sync before COMMIT
	syncFS bool            // instead, one syncfs: file data, renames and directories at once
}

// syncFSMax is the largest file whose commit leaves its data to the
// batch's syncfs rather than fsyncing it alone: a batch of small files
// then costs one flush instead of one per file. A large file is synced on
// its own, in parallel with others and before its batch, so that a batch
// never waits long for someone else's data.
const syncFSMax = 1 << 20

// apply queues op for the next batch and waits until it has run.
func (s *Store) apply(op *batchOp) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("store: closed")
	}
	s.opsWG.Add(1)
	s.mu.Unlock()
	defer s.opsWG.Done()
	op.done = make(chan struct{})
	s.queued.Add(1)
	defer s.queued.Add(-1)
	s.ops <- op
	<-op.done
	return op.err
}

// batcher runs queued ops until s.ops is closed.
func (s *Store) batcher() {
	defer close(s.batcherDone)
	for op := range s.ops {
		ops := []*batchOp{op}
	gather:
		for len(ops) < maxBatch {
			select {
			case op, ok := <-s.ops:
				if !ok {
					break gather
				}
				ops = append(ops, op)
			default:
				break gather
			}
		}
		s.runBatch(ops)
		s.batches.Add(1)
		for _, op := range ops {
			close(op.done)
		}
	}
}

func (s *Store) runBatch(ops []*batchOp) {
	ctx := context.Background()
	failAll := func(err error) {
		for _, op := range ops {
			if op.err == nil {
				op.err = err
			}
		}
	}
	s.writeSem <- struct{}{}
	defer s.unlockWrite()
	tx, err := s.batchConn.BeginTx(ctx, nil)
	if err != nil {
		failAll(wrapDB("begin", err))
		return
	}
	defer tx.Rollback() // no-op after Commit
	b := &batch{dirs: make(map[string]bool)}
	var ran []*batchOp
	undoAll := func() {
		for i := len(ran) - 1; i >= 0; i-- {
			if ran[i].undo != nil {
				ran[i].undo()
			}
		}
	}
	for _, op := range ops {
		// One name for every op's savepoint, released before the next:
		// distinct names would be distinct statements, and push the
		// ops' own out of the connection's statement cache.
		const sp = "op"
		if _, err := tx.ExecContext(ctx, "SAVEPOINT "+sp); err != nil {
			undoAll()
			failAll(wrapDB("savepoint", err))
			return
		}
		if err := op.run(ctx, tx, b); err != nil {
			op.err = err
			if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO "+sp); rerr != nil {
				undoAll()
				failAll(wrapDB("roll back to savepoint", rerr))
				return
			}
		} else {
			ran = append(ran, op)
		}
		if _, err := tx.ExecContext(ctx, "RELEASE "+sp); err != nil {
			undoAll()
			failAll(wrapDB("release savepoint", err))
			return
		}
	}
	if len(ran) == 0 {
		return
	}
	// The renames (and the data of files that did not sync themselves)
	// must be durable before the rows that point at them.
	if b.syncFS {
		if err := syncFS(s.root); err != nil {
			undoAll()
			failAll(err)
			return
		}
		b.dirs = nil // the syncfs covered them
	}
	dirs := make([]string, 0, len(b.dirs))
	for d := range b.dirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if err := syncDir(s.root, d); err != nil {
			undoAll()
			failAll(err)
			return
		}
	}
	if err := tx.Commit(); err != nil {
		// A failed COMMIT normally rolls the transaction back, but ask
		// before undoing: a row must never point at a missing file.
		cerr := wrapDB("commit", err)
		for _, op := range ran {
			in := false
			var qerr error
			if op.committed != nil {
				in, qerr = op.committed(context.WithoutCancel(ctx), s.db)
			}
			switch {
			case qerr != nil:
				op.err = fmt.Errorf("store: commit outcome unknown: %w (checking: %w)", cerr, qerr)
			case in:
				if op.after != nil {
					op.after()
				}
			default:
				if op.undo != nil {
					op.undo()
				}
				op.err = cerr
			}
		}
		return
	}
	for _, op := range ran {
		if op.after != nil {
			op.after()
		}
	}
}

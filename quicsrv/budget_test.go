package quicsrv

import (
	"context"
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	b := newBudget(100)
	if !b.tryAcquire(60) || b.tryAcquire(50) || !b.tryAcquire(40) {
		t.Fatal("tryAcquire does not respect the size")
	}
	b.release(100)

	// Waiters are served in order: a large request is not overtaken by a
	// small one that would fit.
	if err := b.acquire(context.Background(), 90); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 2)
	go func() { b.acquire(context.Background(), 50); order <- 50 }()
	time.Sleep(20 * time.Millisecond) // let the large waiter queue first
	go func() { b.acquire(context.Background(), 5); order <- 5 }()
	time.Sleep(20 * time.Millisecond)
	if b.tryAcquire(1) {
		t.Fatal("tryAcquire jumped the queue")
	}
	select {
	case n := <-order:
		t.Fatalf("request for %d granted while 90 of 100 are taken and 50 waits first", n)
	default:
	}
	b.release(90) // grants both, in order, at once
	if a, c := <-order, <-order; a+c != 55 {
		t.Fatalf("granted %d and %d; want 50 and 5", a, c)
	}
	b.release(55)

	// A request larger than the budget waits until it is the only one.
	b.tryAcquire(10)
	big := make(chan struct{})
	go func() { b.acquire(context.Background(), 500); close(big) }()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-big:
		t.Fatal("an oversized request was granted while others held bytes")
	default:
	}
	b.release(10)
	<-big
	b.release(500)

	// A cancelled waiter leaves the queue and lets the next one in.
	b.tryAcquire(100)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.acquire(ctx, 80) }()
	time.Sleep(20 * time.Millisecond)
	small := make(chan struct{})
	go func() { b.acquire(context.Background(), 10); close(small) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("a cancelled acquire succeeded")
	}
	b.release(50)
	<-small
	b.release(60)
	if b.inUse() != 0 {
		t.Fatalf("in use %d after every release", b.inUse())
	}
}

package sso

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiterCountsOnlyFailures(t *testing.T) {
	l := newLimiter(3)
	// Right passwords give their attempt back.
	for range 10 {
		release, wait := l.take("ip", "alice")
		if wait > 0 {
			t.Fatalf("a right password waited %s", wait)
		}
		release()
	}
	for i := range 3 {
		if _, wait := l.take("ip", "alice"); wait > 0 {
			t.Fatalf("failure %d waited %s", i+1, wait)
		}
	}
	_, wait := l.take("ip", "alice")
	if wait <= 0 || wait > 20*time.Second {
		t.Errorf("after 3 failures: wait %s, want about 20s (one attempt refills every 60/3 s)", wait)
	}
	if _, wait := l.take("ip", "bob"); wait > 0 {
		t.Errorf("another login from the same address is not limited yet: %s", wait)
	}
}

func TestLimitedAddressMakesNoBuckets(t *testing.T) {
	l := newLimiter(1)
	for i := range 4 { // the address budget is 4×1
		if _, wait := l.take("ip", fmt.Sprint("user", i)); wait > 0 {
			t.Fatalf("attempt %d waited", i)
		}
	}
	before := len(l.buckets)
	for i := range 1000 {
		if _, wait := l.take("ip", fmt.Sprint("other", i)); wait == 0 {
			t.Fatal("a limited address got an attempt")
		}
	}
	if len(l.buckets) != before {
		t.Errorf("refused attempts made %d buckets", len(l.buckets)-before)
	}
}

// A full limiter refuses new keys (a minute to wait) and sweeps at most
// once a second, however many new keys arrive; once swept, keys whose
// buckets refilled make room again.
func TestFullLimiterSweepsRarely(t *testing.T) {
	l := newLimiter(5)
	now := time.Now()
	for i := range maxBuckets {
		l.get(now, fmt.Sprint("k", i), 5).tokens-- // each holds a failure
	}
	swept := now.Add(-500 * time.Millisecond)
	l.swept = swept
	if b := l.get(now, "new", 5); b != nil {
		t.Fatal("a full limiter made a bucket")
	}
	if !l.swept.Equal(swept) {
		t.Fatal("swept again within the second")
	}
	// A minute later every bucket has refilled: the sweep frees them.
	later := now.Add(2 * time.Minute)
	if b := l.get(later, "new", 5); b == nil || len(l.buckets) != 1 || !l.swept.Equal(later) {
		t.Fatalf("after refilling: bucket %v, %d buckets, swept %v", b, len(l.buckets), l.swept)
	}
}

package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"time"
)

// writeBigMessage writes a multipart/mixed message with a short text part and
// one attachment of size pseudo-random bytes (seeded), base64 in 76-character
// lines, streaming: nothing of the attachment is held beyond one chunk.
func writeBigMessage(w io.Writer, from, to, msgID string, size int64, seed uint64) error {
	const boundary = "mmgate-bench-boundary-7f3a9c"
	if _, err := fmt.Fprintf(w, "From: Jira <%s>\r\nTo: <%s>\r\nSubject: [bench] 25 MB attachment\r\n"+
		"Message-ID: <%s>\r\nDate: %s\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n"+
		"--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"+
		"The attached file is random data from the mmgate memory bench.\r\n"+
		"--%s\r\nContent-Type: application/octet-stream; name=\"bench-random.bin\"\r\n"+
		"Content-Disposition: attachment; filename=\"bench-random.bin\"\r\n"+
		"Content-Transfer-Encoding: base64\r\n\r\n",
		from, to, msgID, time.Now().Format(time.RFC1123Z), boundary, boundary, boundary); err != nil {
		return err
	}
	rng := rand.NewChaCha8(seedBytes(seed))
	const lineRaw = 57 // → 76 base64 characters
	raw := make([]byte, lineRaw*1024)
	enc := make([]byte, base64.StdEncoding.EncodedLen(lineRaw)*1024+2*1024)
	for left := size; left > 0; {
		n := int(min(int64(len(raw)), left))
		_, _ = rng.Read(raw[:n])
		left -= int64(n)
		out := enc[:0]
		for off := 0; off < n; off += lineRaw {
			end := min(off+lineRaw, n)
			out = base64.StdEncoding.AppendEncode(out, raw[off:end])
			out = append(out, '\r', '\n')
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "--%s--\r\n", boundary)
	return err
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return s
}

// rssSampler records the highest VmRSS seen while it runs (a cross-check of
// the kernel's VmHWM, at 20 ms resolution).
type rssSampler struct {
	mu   sync.Mutex
	peak int64
	stop chan struct{}
	done chan struct{}
}

func sampleRSS(pid int) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if st, err := procStatus(pid); err == nil {
				s.mu.Lock()
				s.peak = max(s.peak, st["VmRSS"])
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

func cmdBigAttach(args []string) error {
	fs := flag.NewFlagSet("bigattach", flag.ExitOnError)
	addr := fs.String("smtp", "", "mmgate SMTP address")
	pid := fs.Int("pid", 0, "mmgate's process id")
	user := fs.String("user", "jira", "SMTP login")
	pass := fs.String("pass", "benchpw", "SMTP password")
	from := fs.String("from", "jira-svc@tools.test", "envelope and header sender")
	to := fs.String("to", "alice@corp.test", "recipient")
	size := fs.Int64("size", 25<<20, "attachment size in bytes (before base64)")
	settle := fs.Duration("settle", 3*time.Second, "wait before the baseline")
	timeout := fs.Duration("timeout", 180*time.Second, "how long to wait for the post")
	_ = fs.Parse(args)
	if *addr == "" || *pid <= 0 {
		return fmt.Errorf("need -smtp and -pid")
	}
	mm, err := newMMReader("MM_URL", "MM_USER_TOKEN", "MM_DM_CHANNEL_ID")
	if err != nil {
		return err
	}
	time.Sleep(*settle)
	st0, err := procStatus(*pid)
	if err != nil {
		return fmt.Errorf("mmgate process: %w", err)
	}
	fmt.Printf("before the message: VmRSS %.1f MiB, VmHWM since start %.1f MiB (start-up peak)\n",
		mib(st0["VmRSS"]), mib(st0["VmHWM"]))
	reset := true
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", *pid), []byte("5"), 0); err != nil {
		reset = false
		fmt.Printf("cannot reset VmHWM (%v): the peak below includes the start-up peak\n", err)
	}
	st1, err := procStatus(*pid)
	if err != nil {
		return err
	}
	base := st1["VmRSS"]
	fmt.Printf("baseline VmRSS %.1f MiB (VmHWM reset: %v, now %.1f MiB)\n", mib(base), reset, mib(st1["VmHWM"]))

	sampler := sampleRSS(*pid)
	msgID := "bench-big-" + runID() + "@bench.mmgate"
	start := time.Now()
	sinceMs := start.UnixMilli() - 1000
	at, err := sendSMTP(smtpMessage{Addr: *addr, User: *user, Pass: *pass, From: *from, To: []string{*to},
		Write:   func(w io.Writer) error { return writeBigMessage(w, *from, *to, msgID, *size, uint64(start.UnixNano())) },
		Timeout: *timeout})
	if err != nil {
		sampler.Stop()
		return fmt.Errorf("sending the message: %w", err)
	}
	fmt.Printf("sent %.1f MiB attachment (%.1f MiB on the wire) in %.1fs; 250 received\n",
		float64(*size)/(1<<20), float64(base64.StdEncoding.EncodedLen(int(*size)))*78/76/(1<<20), at.Sub(start).Seconds())

	var post *mmPost
	deadline := time.Now().Add(*timeout)
	for post == nil && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		posts, err := mm.postsSince(ctx, sinceMs)
		cancel()
		if err != nil {
			fmt.Printf("reading posts: %v\n", err)
			continue
		}
		for i := range posts {
			if propString(posts[i], propMessageID) == msgID && len(posts[i].FileIDs) > 0 {
				post = &posts[i]
				break
			}
		}
	}
	// Let a last allocation burst after the post show up in the peak too.
	time.Sleep(500 * time.Millisecond)
	sampled := sampler.Stop()
	st2, err := procStatus(*pid)
	if err != nil {
		return fmt.Errorf("mmgate process after the message: %w", err)
	}
	growth := st2["VmHWM"] - base
	if post == nil {
		fmt.Printf("the post with the file did not appear within %s\n", *timeout)
	} else {
		fsize := int64(-1)
		if post.Metadata != nil && len(post.Metadata.Files) > 0 {
			fsize = post.Metadata.Files[0].Size
		}
		fmt.Printf("post %s with %d file(s) visible %.1fs after the 250 (file size in Mattermost: %d bytes)\n",
			post.ID, len(post.FileIDs), float64(post.CreateAt-at.UnixMilli())/1000, fsize)
	}
	fmt.Printf("VmHWM %.1f MiB, VmRSS now %.1f MiB, highest sampled VmRSS %.1f MiB\n",
		mib(st2["VmHWM"]), mib(st2["VmRSS"]), mib(sampled))
	fmt.Printf("peak RSS growth = VmHWM - baseline = %.1f MiB\n", mib(growth))
	ok := 0
	if post != nil {
		ok = 1
	}
	fmt.Printf("RESULT posted=%d growth_mib=%.1f baseline_mib=%.1f hwm_mib=%.1f startup_hwm_mib=%.1f reset=%v\n",
		ok, mib(growth), mib(base), mib(st2["VmHWM"]), mib(st0["VmHWM"]), reset)
	return nil
}

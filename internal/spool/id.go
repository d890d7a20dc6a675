package spool

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

// Spool ids are 24 characters of lowercase Crockford base32 encoding 15 bytes:
// 48 bits of Unix milliseconds (so ids sort by time) and 72 random bits (so
// replicas never collide). They are URL- and file-name-safe.
const (
	idLen      = 24
	idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"
)

func newID(now time.Time) string {
	var b [15]byte
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(now.UnixMilli()))
	copy(b[:6], ts[2:])
	_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return encodeID(b)
}

func encodeID(b [15]byte) string {
	var out [idLen]byte
	// 15 bytes = 3 groups of 5 bytes = 3 × 8 characters.
	for g := 0; g < 3; g++ {
		var v uint64
		for i := 0; i < 5; i++ {
			v = v<<8 | uint64(b[g*5+i])
		}
		for i := 7; i >= 0; i-- {
			out[g*8+i] = idAlphabet[v&31]
			v >>= 5
		}
	}
	return string(out[:])
}

// validID reports whether s has the shape of a spool id. Callers use it to
// refuse ids that could never exist (and could name odd file paths).
func validID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') || c == 'i' || c == 'l' || c == 'o' || c == 'u' {
			return false
		}
	}
	return true
}

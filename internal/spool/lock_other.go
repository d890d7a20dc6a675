//go:build !unix

package spool

import "os"

// lockFile only creates the file where flock is unavailable: running two
// worker processes on one spool is then not detected.
func lockFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
}

func unlockFile(f *os.File) error { return f.Close() }

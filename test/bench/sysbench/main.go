// Command sysbench holds the Go helpers of `make bench` (test/bench/run.sh):
//
//	sysbench freeport [N]          print N free loopback TCP ports
//	sysbench waitsmtp ADDR         wait until an SMTP server greets on ADDR
//	sysbench standin -listen ADDR  a stand-in Mattermost that answers every call at once
//	sysbench spoolcount -db PATH   count the messages in a spool, by state
//	sysbench latency …             figure 2: SMTP 250 → post visible in the real Mattermost
//	sysbench bigattach …           figure 3: peak RSS growth for a 25 MB attachment
//	sysbench postback …            figure 4: postback intake load (mail_room's requests)
//	sysbench ldaproute …           figure 6: recipients routed through a real slapd
//
// It owns only the measurement: it never changes mmgate's code or its spool
// (the spool is opened read-only), never talks to anything but 127.0.0.1, and
// never prints a token. Every command is bounded in time.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "freeport":
		err = cmdFreePort(args)
	case "waitsmtp":
		err = cmdWaitSMTP(args)
	case "standin":
		err = cmdStandin(args)
	case "spoolcount":
		err = cmdSpoolCount(args)
	case "latency":
		err = cmdLatency(args)
	case "bigattach":
		err = cmdBigAttach(args)
	case "postback":
		err = cmdPostback(args)
	case "ldaproute":
		err = cmdLDAPRoute(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sysbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sysbench freeport|waitsmtp|standin|spoolcount|latency|bigattach|postback|ldaproute [flags]")
	os.Exit(2)
}

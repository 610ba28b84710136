// Command pause is the process that holds a pod sandbox's namespaces on the real node
// (localcluster.py --real-node). No registry can be reached here, so registry.k8s.io/pause cannot be
// pulled; this does what it does: sleep until SIGINT or SIGTERM, and reap the children that a shared
// PID namespace would hand to PID 1.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

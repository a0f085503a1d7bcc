// pause holds a pod's namespaces: it sleeps until SIGINT or SIGTERM and reaps the zombies that
// are re-parented to it (it is PID 1 of the sandbox). A stand-in for upstream's pause.c when no
// pause image from hack/images/ is available.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

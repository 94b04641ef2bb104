// The sandbox ("pause") program of the local real node: holds a pod's namespaces open, reaps
// zombies when it is PID 1 of a shared PID namespace, and exits on SIGINT/SIGTERM.
// Built statically by tools/node/images.py (CGO_ENABLED=0) into the pause image containerd uses
// as its sandbox_image, because no registry is reachable to pull registry.k8s.io/pause.
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
		if sig == syscall.SIGCHLD {
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}

// Copyright The nftpol Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// Command pause is the sandbox ("infra") container of a pod: it holds the pod's namespaces open
// and, as PID 1 of a shared PID namespace, reaps orphaned children. It behaves like upstream's
// pause: SIGINT/SIGTERM end it with status 0, SIGCHLD reaps every exited child, `-v` prints the
// version. It is ours rather than upstream's C so that the image is built from this repository.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is the version this program answers with `-v`; the image is tagged with the
// sandbox-image tag containerd asks for, which need not match.
const version = "nftpol-pause-1.0"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Printf("pause version %s\n", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}

	// Registered before anything can exit so that no SIGCHLD is lost; a buffered channel
	// coalesces bursts, which is why each SIGCHLD reaps in a loop rather than one child.
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// Children may have exited before Notify took effect (e.g. inherited zombies).
	reap()

	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited, without blocking on those still running.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		// pid 0: children remain but none has exited; ECHILD: no children at all.
		if pid <= 0 || err != nil {
			return
		}
	}
}

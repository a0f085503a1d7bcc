#!/usr/bin/env bash
# summarize.sh CONSOLE_LOG SUITE ACCEL SECONDS QEMU_RC: one line for a kernel run, from the
# markers hack/kernels/init prints and the `test result:` lines of the test binaries.
set -euo pipefail
log=$1 suite=$2 accel=$3 secs=$4 qrc=$5
tr -d '\r' <"$log" | awk -v suite="$suite" -v accel="$accel" -v secs="$secs" -v qrc="$qrc" '
/^NFTPOL-KERNEL / { kernel = $2 }
/^NFTPOL-MODPROBE-FAILED / { nomod = nomod " " $2 }
/^NFTPOL-KEEP-HOOKS-FAILED/ { nokeep = 1 }
/^NFTPOL-SUITE-BEGIN / { cur = $2; res[cur] = "no-result"; order[++n] = cur }
/^test result: / {
	p = 0; f = 0
	for (i = 1; i <= NF; i++) {
		if ($i ~ /^passed;?$/) p = $(i - 1)
		if ($i ~ /^failed;?$/) f = $(i - 1)
	}
	if (cur != "") { res[cur] = p "/" f; pass += p; fail += f }
}
/^NFTPOL-SUITE-END / { rc[$2] = $3; secs_of[$2] = $4 }
/^NFTPOL-DONE/ { done = 1 }
END {
	if (kernel == "") kernel = "(did not boot)"
	out = sprintf("%s %s accel=%s", suite, kernel, accel)
	for (i = 1; i <= n; i++) {
		s = order[i]
		sub(/^seconds=/, "", secs_of[s])
		out = out sprintf(" %s=%s(%s,%ss)", s, res[s], (s in rc) ? rc[s] : "unfinished", secs_of[s])
	}
	out = out sprintf(" passed=%d failed=%d duration=%ss", pass, fail, secs)
	if (!done) out = out sprintf(" INCOMPLETE(qemu rc=%s)", qrc)
	if (nomod != "") out = out " modprobe-failed:" nomod
	if (nokeep) out = out " keep-hooks-failed"
	print out
}'

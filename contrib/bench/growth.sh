#!/usr/bin/env bash
# Growth of outbound cost with the member count (issue 14 item 5): 10, 100, 1,000 and 10,000
# X25519 members, a 100 KiB post, default batch_size (50), in one run:
#   in-process  benches/pipeline.rs  plan_batches + encrypt_batches on all cores;
#   milter      benches/milter.rs    the real daemon on a unix socket, the post sent as Mailman
#               sends it (transactions of max_recipients = 500, within Postfix's
#               smtpd_recipient_limit = 1000), extra batches reinjected into an SMTP sink.
# Per member count: wall time, CPU per recipient (the whole process) and the peak RSS above
# the resident size before the message (VmHWM reset with /proc/self/clear_refs). Each size is
# measured warm (keys validated by a first message); smaller lists repeat the post up to
# 10,000 recipients, so the CPU column (10 ms clock of /proc/self/stat) is read over >= 1 s.
#
# Usage: contrib/bench/growth.sh PIPELINE_BENCH MILTER_BENCH
#   the executables printed by `cargo bench --bench pipeline --bench milter --no-run`.
# Environment: SIZES (default 10,100,1000,10000).
set -euo pipefail
PIPELINE=${1:?usage: growth.sh PIPELINE_BENCH MILTER_BENCH}
MILTER=${2:?usage: growth.sh PIPELINE_BENCH MILTER_BENCH}
SIZES=${SIZES:-10,100,1000,10000}
echo "# $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
LISTCRYPT_BENCH_GROWTH=$SIZES "$PIPELINE" --bench
echo
LISTCRYPT_BENCH_MAILMAN=$SIZES "$MILTER" --bench
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"""The child process that evaluates one genome: `python -m fitness.worker`.

Protocol: the parent writes one JSON job on stdin (code, settings, seed, a random nonce);
the worker moves its stdout aside (the genome's prints and tracebacks go to the stderr
log), imports torch and the harness, arms the audit hook, then loads and evaluates the
genome and writes `<nonce> <result JSON>` on the saved stdout descriptor. A result
without the nonce is treated as forged. The worker ends with os._exit so no genome
finaliser or thread can run after the report.
"""
from __future__ import annotations

import json
import os
import sys


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def main() -> None:
    """Run one job from stdin; report on the original stdout; exit."""
    result_fd = os.dup(1)  # the only channel the parent reads; not inheritable
    os.dup2(2, 1)  # print() now lands in the capped log
    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    nonce = job.pop("nonce")
    threads = int(job["threads"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import torch.optim  # noqa: F401  - import everything the harness needs before arming the guard
    from fitness import checks, guard, train  # noqa: F401
    from fitness.evaluate import evaluate_in_process
    from fitness.tasks import mqar  # noqa: F401

    guard.install(job["scratch"], max_procs=int(job["max_procs"]))
    result = evaluate_in_process(job["code"], job["stage"], job["checks"], int(job["seed"]),
                                 job["device"], memory_mb=job.get("memory_mb"))
    _write_all(result_fd, (nonce + " " + json.dumps(result) + "\n").encode())
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

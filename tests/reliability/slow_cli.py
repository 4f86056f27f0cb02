"""`python slow_cli.py DELAY ARGS...`: `jdistill ARGS` with every training batch delayed by DELAY seconds, so a
test can send a signal (or SIGKILL) to a run at a step of its choosing. Prints `step N` to stdout as each
batch is handed to the step."""

import sys
import time

from jdistill.train import inputs


def main() -> int:
    delay = float(sys.argv[1])
    original = inputs.batches_from

    def slow_batches(dataset, start, stop):
        for step, batch in zip(range(start + 1, stop + 1), original(dataset, start, stop), strict=False):
            time.sleep(delay)
            print(f"step {step}", flush=True)
            yield batch

    inputs.batches_from = slow_batches
    from jdistill.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

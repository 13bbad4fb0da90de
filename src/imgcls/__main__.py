"""`python -m imgcls` and the `imgcls` command. SIGTERM is taken as Ctrl-C from the first moment, and Ctrl-C is
never ignored (each command then ends as it does on Ctrl-C: a training command by its signal rule, the others at
once, writing nothing half-way), and a signal while the command line's own modules load ends quietly."""

import os
import signal
import sys


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starts a background job with it ignored
        signal.signal(signum, signal.default_int_handler)
    try:
        from imgcls.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        os._exit(130)  # nothing to finalize: a half-imported module's clean-up must not change the exit
    run()


if __name__ == "__main__":  # not when a worker process imports this module
    main()

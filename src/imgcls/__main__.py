"""`python -m imgcls` and the `imgcls` command. SIGTERM is taken as Ctrl-C from the first moment, and Ctrl-C is
never ignored (each command then ends as it does on Ctrl-C: a training command by its signal rule, the others at
once, writing nothing half-way), and a signal while the command line's own modules load ends quietly."""

import os
import signal
import sys

HELD = ("numpy", "torch")  # an interrupt inside numpy's import, which torch's C start-up runs, is swallowed there:
#                            the signal is lost, or numpy is left half-imported and matplotlib fails later


class HeldSignals:
    """Ctrl-C and SIGTERM wait while `names` first import, and arrive as soon as they have. A finder for
    sys.meta_path without importlib.abc's base class, whose import would leave a signal unhandled for longer."""

    def __init__(self, names: tuple[str, ...] = HELD):
        self.names = names

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:  # a loader made for this spec: its own exec_module, held
                    spec.loader.exec_module = _held(spec.loader.exec_module)
                return spec
        return None


def _held(exec_module):
    def held_exec_module(module) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            exec_module(module)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return held_exec_module


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starts a background job with it ignored
        signal.signal(signum, signal.default_int_handler)
    try:
        sys.meta_path.insert(0, HeldSignals())
        from imgcls.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing was written\n")
        sys.stderr.flush()
        os._exit(130)  # nothing to finalize: a half-imported module's clean-up must not change the exit
    run()


if __name__ == "__main__":  # not when a worker process imports this module
    main()

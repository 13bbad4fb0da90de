"""`python -m imgcls` and the `imgcls` command. SIGTERM is taken as Ctrl-C from the first moment, and Ctrl-C is
never ignored (each command then ends as it does on Ctrl-C: a training command by its signal rule, the others at
once, writing nothing half-way), and a signal while the command line's own modules load ends quietly."""

import os
import signal
import sys

STOPS = (signal.SIGINT, signal.SIGTERM)
# Packages whose imports hold Ctrl-C and SIGTERM: an interrupt inside numpy's import, which torch's C start-up runs,
# is swallowed there; one inside a class body of torchvision's (torch's compiler) or matplotlib's is a RuntimeError.
HELD = ("numpy", "torch", "torchvision", "matplotlib", "PIL")


class HeldSignals:
    """Ctrl-C and SIGTERM wait while a module of `names` imports, and arrive as soon as the outermost import has
    ended. A finder for sys.meta_path without importlib.abc's base class, whose import would take longer."""

    def __init__(self, names: tuple[str, ...] = HELD):
        self.names = names
        self.depth, self.caught = 0, []

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] not in self.names:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, type):  # this spec's own loader
                    spec.loader.exec_module = self._held(spec.loader.exec_module)
                return spec
        return None

    def _held(self, exec_module):
        def held_exec_module(module) -> None:
            import threading  # here, not before main() has installed the handlers

            if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
                return exec_module(module)
            outermost, self.depth = self.depth == 0, self.depth + 1
            if outermost:  # the main thread blocks them (no EINTR in C code); a handler records those that other
                #            threads (torch's) take, since any thread's C handler makes the main thread run it
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
                handlers = [signal.signal(signum, lambda signum, frame: self.caught.append(signum)) for signum in STOPS]
            try:
                exec_module(module)
            finally:
                self.depth -= 1
                if outermost:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a blocked signal arrives now, recorded
                    for signum, handler in zip(STOPS, handlers):
                        signal.signal(signum, handler)
                    caught, self.caught = self.caught, []
                    for signum in caught:  # as if it came now: the command's own handler (or the default) takes it
                        if callable(handler := signal.getsignal(signum)):
                            handler(signum, None)
                        else:
                            signal.raise_signal(signum)
        return held_exec_module


def main() -> None:
    for signum in STOPS:  # SIGINT too: a shell starts a background job with it ignored
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

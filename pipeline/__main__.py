"""``python -m pipeline``: see :mod:`pipeline.cli`."""
import logging
import os
import sys

from pipeline.cli import main

if __name__ == "__main__":
    code = main()
    # Skip the interpreter's module teardown: with lava.lib.dl imported it spends 6-10 s in
    # garbage collection after all work is done (seen in gdb). Every artifact is already
    # written atomically and Lava's runtime is stopped by then; flush what is buffered.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)

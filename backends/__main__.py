"""Entry point for `python -m backends`.

Commands that only read the store end without Python's module-by-module teardown: with
torch, transformers and chromadb loaded it took ~1.5 s after the answer was printed. The
exit handlers still run first (the decoder stops, the store lock is released). Commands
that write keep the normal exit, so every library closes its files as it expects.
"""

import atexit
import os
import sys

from backends.apps.cli import main

READ_ONLY_COMMANDS = {"ask", "list"}

code = main()
if len(sys.argv) > 1 and sys.argv[1] in READ_ONLY_COMMANDS:
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

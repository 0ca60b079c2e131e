"""Entry point for `python -m backends`."""

import sys

from backends.cli import main

sys.exit(main())

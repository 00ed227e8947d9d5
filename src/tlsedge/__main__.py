"""`python -m tlsedge` runs the command line."""

import sys

from tlsedge.cli import main

sys.exit(main())

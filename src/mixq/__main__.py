"""`python -m mixq`: the command line."""

import sys

from mixq.cli import main

sys.exit(main())

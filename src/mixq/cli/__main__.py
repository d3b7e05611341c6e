"""`python -m mixq.cli`: the command line (also what `torchrun -m mixq.cli` runs)."""

import sys

from mixq.cli import main

sys.exit(main())

"""`python -m stagegpt` (and `torchrun -m stagegpt`) run the CLI."""

import sys

from stagegpt.cli import main

sys.exit(main())

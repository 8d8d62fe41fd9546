"""``python -m alexnet`` (and ``torchrun -m alexnet``) runs the command line."""

import sys

from .cli import main

sys.exit(main())

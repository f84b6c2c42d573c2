"""`python -m trainer` is `textgen-train` (torchrun runs it this way too)."""

import sys

from trainer.cli import main

sys.exit(main())

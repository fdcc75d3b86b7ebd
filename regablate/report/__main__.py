"""`python -m regablate.report ...` is `regablate report ...`."""

import sys

from regablate.cli.report import main

sys.exit(main(sys.argv[1:]))

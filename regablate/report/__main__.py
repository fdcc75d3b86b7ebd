"""`python -m regablate.report ...` is `regablate report ...`."""

import sys

from regablate.report.command import main

sys.exit(main(sys.argv[1:]))

"""The command line: one module per `regablate <command>`, each its parsing and printing.

main (the dispatcher, `regablate.cli:main`), run (`regablate run`: Hydra's entry point),
status, lint, tb, data; streams keeps output safe when its reader goes away.
`regablate report`, `plan` and `export` parse and print beside what they drive
(regablate.report.command, regablate.report.plan, regablate.report.export). Heavy libraries
load inside each command.
"""

from regablate.cli.main import main

__all__ = ["main"]

from regablate.cli import main

main()

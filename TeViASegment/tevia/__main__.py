import sys

from tevia.commands.cli import main

sys.exit(main())

import sys

from tevia.cli import main

sys.exit(main())

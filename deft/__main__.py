import sys

from deft.cli import main

sys.exit(main())

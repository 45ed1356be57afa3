import sys

from fraud.cli import main

sys.exit(main())

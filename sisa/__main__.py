import sys

from sisa.cli import main

sys.exit(main())

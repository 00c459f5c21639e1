import sys

from eelsgpu.cli import main

sys.exit(main())

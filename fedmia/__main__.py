"""`python -m fedmia`."""

import sys

from fedmia.cli import main

sys.exit(main())

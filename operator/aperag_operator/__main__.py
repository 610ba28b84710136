"""``python -m aperag_operator run ...``"""

import sys

from aperag_operator.cli import main

sys.exit(main())

"""``python -m orgaseg_core <step> ...``: the ``orgaseg`` command line without the console script.

``analyze`` and ``example`` start their TensorFlow and torch steps this way, each in its own
process with the same Python (the two frameworks crash when loaded into one process).
"""

import sys

from .cli import main

sys.exit(main())

"""``python -m orgaseg_core <step> ...``: the ``orgaseg`` command line without the console script.

``analyze`` and ``example`` start their TensorFlow and torch steps this way, each in its own
process with the same Python (the two frameworks crash when loaded into one process).
``python -m orgaseg_core --warm-step-server <step>`` is one of analyze's warm step processes,
which runs that step again and again (:mod:`orgaseg_core.pipelines.step_server`).
"""

import sys

from .cli import main
from .pipelines.step_server import SERVER_OPTION, serve

if len(sys.argv) == 3 and sys.argv[1] == SERVER_OPTION:
    sys.exit(serve(sys.argv[2], main))
sys.exit(main())

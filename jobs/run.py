"""Execute one run: ``python jobs/run.py method=coop dataset=world_shapes seed=1 ...`` or ``--config FILE``.
See :func:`jobs.cli.run_main`."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from jobs.cli import run_main
    sys.exit(run_main())

"""Launch a grid: ``python jobs/launch.py --grid grids/quickstart.yaml [--executor inline|local|slurm]
[--dry-run] [--status] [key=value ...]``. See :func:`jobs.cli.launch_main`."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from jobs.cli import launch_main
    sys.exit(launch_main())

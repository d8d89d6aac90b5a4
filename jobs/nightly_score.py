"""Nightly scoring as a Ray job, with exactly the options of `wbc-ray score`:

    ray job submit --working-dir . -- python jobs/nightly_score.py \\
        --checkpoint s3://models/wbc/best --input s3://archive/slides \\
        --output s3://results/wbc [--no-progress]

Prints the run summary as JSON; exit status 2 for bad arguments or an unreachable store.
Rerunning a night is safe: only unscored inputs are scored.
"""

import sys

from wbc_ray.cli import app

if __name__ == "__main__":
    app(["score", *sys.argv[1:]], prog_name="jobs/nightly_score.py")

"""A hyperparameter sweep as a Ray job, with exactly the options of `wbc-ray tune`:

    ray job submit --working-dir . -- python jobs/tune.py --data s3://bucket/images \
        --trials 16 --max-epochs 30 --gpus-per-trial 1 --output s3://bucket/tune \
        [--config tune.yaml]

Resubmitting with the same --output and --name resumes an interrupted sweep.
"""

import sys

from wbc_ray.cli import app

if __name__ == "__main__":
    app(["tune", *sys.argv[1:]], prog_name="jobs/tune.py")

"""Training as a Ray job, with exactly the options of `wbc-ray train`:

    ray job submit --working-dir . -- python jobs/train.py --data s3://bucket/images --gpus 8
"""

import sys

from wbc_ray.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="jobs/train.py")

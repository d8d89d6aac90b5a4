"""End-to-end workflows (train-then-evaluate, evaluate, audit, demo): the layer the CLI and
``jobs/`` call. They compose the library layers below and never start Ray themselves; the
entry point does, once (``wbc_ray.ray_session.init_ray``)."""

"""The review station: a technologist verifies the nightly results; corrections train models.

``wbc-ray review --scored <output>`` serves a small web application over a scoring output
(:mod:`wbc_ray.scoring.publish` documents its layout). Nothing the scorer wrote is ever
modified; the review writes its own tables beside the machine's::

    corrections/<sample key>/<event id>.parquet     one file per review action (append-only)
    signed/run_date=YYYY-MM-DD/<sample key>-<fingerprint>-<signoff id>.parquet
                                                    the signed (reviewed) differential, one row
    signed_cells/run_date=YYYY-MM-DD/<same name>    the reviewed label of every cell it counted
    review/summary.json                             statuses and the agreement report

Every write is one file published whole (temp + rename locally, one PUT on object stores)
under a unique id, so concurrent reviewers and a killed server can neither lose nor
duplicate a row; a retried request reuses its event id and so rewrites nothing. The current
state of a cell is its latest event; the current sign-off of a sample is its latest one.

Modules: :mod:`.source` reads the scoring output (column projection and per-sample files,
never the whole run), :mod:`.state` holds the pure review rules and the append-only store,
:mod:`.thumbs` makes thumbnails on demand, :mod:`.app` is the ASGI application.
"""

"""Entry points the CLI calls: serve the review station, export the training manifest."""

from __future__ import annotations

from wbc_ray.review.station import ReviewSettings, ReviewStation


def settings_from(config: str | None) -> ReviewSettings:
    """Reference ranges and minimum count from the run config's ``score`` section."""
    from wbc_ray.config import load_run_config

    score = load_run_config(config, {}).score
    return ReviewSettings(reference_ranges=dict(score.reference_ranges),
                          min_cells=score.min_cells)


def open_station(scored: str, config: str | None = None,
                 fingerprint: str | None = None) -> ReviewStation:
    return ReviewStation(scored, settings_from(config), fingerprint)


def serve(scored: str, *, host: str = "127.0.0.1", port: int = 8765, config: str | None = None,
          fingerprint: str | None = None, echo=print) -> None:
    """Check the scoring output, then serve the review pages until interrupted."""
    import uvicorn

    from wbc_ray.review.app import create_app

    station = open_station(scored, config, fingerprint)
    echo(f"reviewing {len(station.run.samples())} samples of {scored} "
         f"(checkpoint {station.run.info.fingerprint}) at http://{host}:{port}/")
    uvicorn.run(create_app(station, host=host), host=host, port=port, log_level="warning")


def export(scored: str, output: str, *, config: str | None = None,
           fingerprint: str | None = None) -> dict:
    """Write the training manifest of the signed samples to ``output``; returns counts."""
    return open_station(scored, config, fingerprint).export(output)

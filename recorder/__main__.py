"""`recorder` and `python -m recorder`: catch the stop signals first, then run the CLI."""

from __future__ import annotations


def main() -> None:
    """Install the stop-signal handlers before anything slow, then hand over to click."""
    from recorder.stopping import STOP

    STOP.install()
    from recorder.cli import cli

    cli()


if __name__ == "__main__":
    main()

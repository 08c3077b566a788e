from recorder.cli import cli

cli()

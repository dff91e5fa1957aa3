"""The click commands of `circuitshift`, one thin module per command group (loaded lazily by
ingest/cli.py). Options shared by several commands live in options.py; no command module imports
another, and each loads its job (ingest/jobs/) only when it runs, so `--help` and `db` stay light."""

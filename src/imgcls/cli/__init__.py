"""The command line: the typer app and its flags, read from the config's declarations."""

from paretopipe.cli import entry

entry()

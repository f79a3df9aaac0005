from onegen.cli import app

app()

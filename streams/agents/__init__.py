"""One module per stage; each exposes `register(app, runtime, table)`."""

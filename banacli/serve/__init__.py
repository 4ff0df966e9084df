"""bana serve: a Label Studio ML backend (see banacli/serve/app.py)."""

"""HTTP routes; each module exposes ``setup(app)``."""

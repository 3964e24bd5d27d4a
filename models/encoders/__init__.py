"""Image and text encoders behind two small interfaces (see `base.py`); `registry.py` builds them from config."""

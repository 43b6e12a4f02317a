"""A model file inside a discovered folder: discovery never executes it (skipped_model)."""

from shop.models import db


@db.model
class Supplier:
    name: str
    country: str = "NL"

"""The shop's DataFlow models: the app imports this once; discovery never runs it.

DATABASE_URL picks the database; `nexus-dataflow serve` sets it to a SQLite
file in the project directory unless you give --database-url. The fallback is
an absolute SQLite path: DataFlow mishandles relative ones (sqlite:///shop.db).
"""

import os
from pathlib import Path

from dataflow import DataFlow

PROJECT = Path(__file__).resolve().parent.parent
db = DataFlow(os.environ.get("DATABASE_URL", f"sqlite:///{PROJECT / 'shop.db'}"))


@db.model
class Product:
    name: str
    price: float
    stock: int = 0


@db.model
class Order:
    product_id: int
    quantity: int
    status: str = "new"

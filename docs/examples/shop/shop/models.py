"""The shop's DataFlow models: the app imports this once; discovery never runs it.

DATABASE_URL picks the database; `nexus-dataflow serve` sets it to a SQLite
file in the project directory unless you give --database-url.
"""

import os

from dataflow import DataFlow

db = DataFlow(os.environ.get("DATABASE_URL", "sqlite:///shop.db"))


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

"""Uses the app's models, so discovery skips it (skipped_dependent).

`nexus-dataflow serve` loads it explicitly, after the models exist, so its
ProductCreateNode is the app's own and writes to the app's database.
"""

from kailash.workflow.builder import WorkflowBuilder
from shop.models import Product  # noqa: F401  (the models must be loaded first)


def restock_workflow():
    builder = WorkflowBuilder()
    builder.add_node("ProductCreateNode", "restock", {"name": "restocked item", "price": 1.0})
    return builder

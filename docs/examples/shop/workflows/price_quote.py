"""A plain workflow: discovered in an isolated worker and registered as `price_quote`.

POST /workflows/price_quote/execute {"inputs": {"price": 10, "quantity": 3}}
"""

from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node(
    "PythonCodeNode",
    "quote",
    {"code": "result = {'total': round(price * quantity * 1.2, 2), 'currency': 'EUR'}"},
)

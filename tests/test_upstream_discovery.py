"""Upstream Nexus discovery tests, ported to ``nexus_dataflow_plugin.discover_workflows``.

Source: github.com/terrene-foundation/kailash-py
  U = packages/kailash-nexus/tests/unit/test_discovery.py
  I = tests/integration/nexus/test_discovery_system_integration.py
  E = tests/e2e/nexus/test_complete_user_workflows_e2e.py

Every ported test reproduces the upstream black-box scenario (the files written to a
temporary directory, the names and counts expected) against our engine, and carries a
``# upstream:`` comment naming its origin. ``test_parity_with_native_discovery`` at the
end compares our result with native ``nexus.discovery.discover_workflows`` run in a
subprocess (native discovery executes the discovered files in-process).

Left out (one line each):
- U TestWorkflowDiscovery.test_load_workflow_error_handling: drives private
  _load_workflow_from_file and asserts a mocked logger.warning call; its black-box
  part (a syntax-error file yields no workflow) is ported from
  I test_workflow_loading_error_handling.
- U TestWorkflowDiscovery.test_is_workflow_validation: calls private _is_workflow on Mock objects.
- U TestWorkflowDiscovery.test_prepare_workflow: calls private _prepare_workflow on Mock objects.
- U TestWorkflowDiscovery.test_generate_workflow_name: calls private _generate_workflow_name;
  the naming rules are covered by the parity test.
- U TestWorkflowDiscovery.test_empty_directory_handling: only its logger-mock half is left
  out (asserts mock_logger.info call counts); the empty-dict half is ported.
- I TestWorkflowDiscoveryIntegration.test_discovery_initialization_with_valid_path: inspects
  WorkflowDiscovery.base_path / _discovered_workflows internals.
- I TestWorkflowDiscoveryIntegration.test_discovery_initialization_with_invalid_path_fallback:
  inspects WorkflowDiscovery.base_path; its black-box part (a missing base path does not
  raise) is ported as test_discover_nonexistent_base_path_does_not_raise.
- I TestDiscoveryDiagnostics.test_discovery_logging_on_success: asserts "nexus.discovery" log lines.
- I TestDiscoveryDiagnostics.test_discovery_warning_on_load_failure: asserts log lines.
- E TestSessionManagementUserFlowE2E.*, TestEnterpriseWorkflowDeploymentE2E.*: not about
  discovery (sessions, deployment, versioning with auto_discovery=False); out of scope.

Ported through the public function although upstream enters via a private method:
- U TestWorkflowDiscovery.test_load_workflow_from_file_success (upstream calls
  _load_workflow_from_file; the file, the name and the count are black-box).

Documented narrowing: native discovery calls ANY zero-argument callable it finds in a
module (imported ones, ones without ``return <value>``, ones the file calls under
``if __name__ == "__main__":``), twice each. Our engine only calls functions defined in
the file itself that contain ``return <value>``, never one called under the main guard,
each once. None of the ported scenarios conflicts with that narrowing: every factory
they rely on is defined in its own file and returns a value. (U
test_factory_function_discovery also binds an alias ``workflow_factory =
create_workflow``; upstream accepts either name, so its assertion is kept as is.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kailash.workflow import Workflow

from nexus_dataflow_plugin import discover_workflows

# The snippet every upstream test writes, with its node id and code as parameters.
BUILDER_FILE = """
from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("PythonCodeNode", "{node}", {{"code": "{code}"}})
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _builder_file(path: Path, node: str = "agent", code: str = "result = 'hello'") -> Path:
    return _write(path, BUILDER_FILE.format(node=node, code=code))


def _node_ids(workflow: Workflow) -> set[str]:
    return set(workflow.nodes)


# ---------------------------------------------------------------------------
# Unit tests (U)
# ---------------------------------------------------------------------------


# upstream: U TestWorkflowDiscovery.test_discover_workflows_patterns
def test_discover_workflows_patterns(tmp_path: Path) -> None:
    workflows_dir = tmp_path / "workflows"
    workflows_dir.mkdir()
    for file in (
        workflows_dir / "test1.py",
        tmp_path / "test.workflow.py",
        tmp_path / "workflow_test2.py",
    ):
        _builder_file(file)

    workflows = discover_workflows(str(tmp_path))

    # Should find all three workflows
    assert len(workflows) >= 3
    # Names native discovery gives these files (file stem, object is named "workflow").
    assert {"test1", "test.workflow", "workflow_test2"} <= set(workflows)


# upstream: U TestWorkflowDiscovery.test_load_workflow_from_file_success
# (upstream calls the private _load_workflow_from_file; ported through the public function)
def test_load_workflow_from_file_success(tmp_path: Path) -> None:
    _builder_file(tmp_path / "test_workflow.py")

    workflows = discover_workflows(str(tmp_path))

    assert len(workflows) == 1
    assert "test_workflow" in list(workflows.keys())[0]
    assert isinstance(workflows["test_workflow"], Workflow)


# upstream: U TestWorkflowDiscovery.test_exclude_files
def test_exclude_files(tmp_path: Path) -> None:
    for name in ("__init__.py", "setup.py", "conftest.py"):
        (tmp_path / name).write_text("# Should be ignored")
    _builder_file(tmp_path / "valid_workflow.py")

    workflows = discover_workflows(str(tmp_path))

    # Should only find the valid file
    assert len(workflows) == 1
    assert "valid_workflow" in list(workflows.keys())[0]


# upstream: U TestWorkflowDiscovery.test_empty_directory_handling
# (the half asserting mock_logger.info call counts is left out)
def test_empty_directory_handling(tmp_path: Path) -> None:
    assert discover_workflows(str(tmp_path)) == {}


# upstream: U TestWorkflowDiscovery.test_factory_function_discovery
def test_factory_function_discovery(tmp_path: Path) -> None:
    _write(
        tmp_path / "factory_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        def create_workflow():
            builder = WorkflowBuilder()
            builder.add_node("PythonCodeNode", "agent", {"code": "result = 'hello'"})
            return builder

        # Export the factory
        workflow_factory = create_workflow
        """,
    )

    workflows = discover_workflows(str(tmp_path))

    # Should discover the factory (may find multiple objects)
    assert len(workflows) >= 1
    # At least one should be our factory
    assert any("workflow_factory" in name or "create_workflow" in name for name in workflows.keys())


# ---------------------------------------------------------------------------
# Integration tests (I)
# ---------------------------------------------------------------------------


# upstream: I test_discovery_initialization_with_invalid_path_fallback
# (in TestWorkflowDiscoveryIntegration; upstream inspects WorkflowDiscovery.base_path,
# ported as the black-box "does not crash")
def test_discover_nonexistent_base_path_does_not_raise(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "path" / "that" / "does" / "not" / "exist"

    workflows = discover_workflows(str(missing))

    assert workflows == {}


# upstream: I TestWorkflowDiscoveryIntegration.test_discover_workflows_in_empty_directory
def test_discover_workflows_in_empty_directory(tmp_path: Path) -> None:
    assert discover_workflows(str(tmp_path)) == {}


# upstream: I TestWorkflowDiscoveryIntegration.test_discover_workflow_from_pattern
def test_discover_workflow_from_pattern(tmp_path: Path) -> None:
    _builder_file(tmp_path / "test_workflow.py", node="test", code="result = 42")

    workflows = discover_workflows(str(tmp_path))

    assert len(workflows) > 0


# upstream: I TestWorkflowDiscoveryIntegration.test_discover_multiple_workflow_patterns
def test_discover_multiple_workflow_patterns(tmp_path: Path) -> None:
    # pattern workflows/*.py
    _builder_file(tmp_path / "workflows" / "my_workflow.py", node="node1", code="result = 1")
    # pattern *_workflow.py
    _builder_file(tmp_path / "data_workflow.py", node="node2", code="result = 2")

    workflows = discover_workflows(str(tmp_path))

    # Should discover both workflows
    assert len(workflows) >= 2
    assert _node_ids(workflows["my_workflow"]) == {"node1"}
    assert _node_ids(workflows["data_workflow"]) == {"node2"}


# upstream: I TestWorkflowDiscoveryIntegration.test_exclude_files_from_discovery
def test_exclude_files_from_discovery(tmp_path: Path) -> None:
    _write(
        tmp_path / "workflows" / "__init__.py",
        """
        from kailash.workflow.builder import WorkflowBuilder
        workflow = WorkflowBuilder()
        """,
    )
    _builder_file(tmp_path / "workflows" / "valid.py", node="test", code="result = 1")

    workflows = discover_workflows(str(tmp_path))

    # Should only find valid workflow, not __init__.py
    assert len(workflows) == 1
    assert "__init__" not in str(list(workflows.keys())[0])


# upstream: I TestWorkflowDiscoveryIntegration.test_workflow_loading_error_handling
def test_workflow_loading_error_handling(tmp_path: Path) -> None:
    (tmp_path / "invalid_workflow.py").write_text("this is not valid python syntax!!!")

    # Should not raise; the invalid file is skipped
    workflows = discover_workflows(str(tmp_path))

    assert workflows == {}


# upstream: I TestWorkflowDiscoveryIntegration.test_callable_workflow_factory_detection
def test_callable_workflow_factory_detection(tmp_path: Path) -> None:
    _write(
        tmp_path / "factory_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        def create_workflow():
            workflow = WorkflowBuilder()
            workflow.add_node("PythonCodeNode", "factory", {"code": "result = 'factory'"})
            return workflow.build()
        """,
    )

    workflows = discover_workflows(str(tmp_path))

    # Should discover workflow from factory
    assert len(workflows) > 0


# upstream: I TestWorkflowDiscoveryIntegration.test_callable_requiring_arguments_skipped
def test_callable_requiring_arguments_skipped(tmp_path: Path) -> None:
    _write(
        tmp_path / "parameterized_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        def create_workflow(name, version):  # Requires arguments
            workflow = WorkflowBuilder()
            workflow.add_node("PythonCodeNode", name, {"code": f"result = '{version}'"})
            return workflow.build()
        """,
    )

    # Should not raise exception - should skip function
    workflows = discover_workflows(str(tmp_path))

    # Function should be skipped (can't call without args)
    assert "parameterized_workflow.create_workflow" not in workflows


# upstream: I TestWorkflowDiscoveryIntegration.test_workflow_name_generation
def test_workflow_name_generation(tmp_path: Path) -> None:
    _write(
        tmp_path / "data_processing_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        my_workflow = WorkflowBuilder()
        my_workflow.add_node("PythonCodeNode", "process", {"code": "result = 'processed'"})
        """,
    )

    workflows = discover_workflows(str(tmp_path))

    # Check generated name includes file stem
    workflow_names = list(workflows.keys())
    assert any("data_processing" in name for name in workflow_names)
    # The exact name native discovery generates: "<stem>.<object>"
    assert "data_processing_workflow.my_workflow" in workflows


# upstream: I TestWorkflowDiscoveryIntegration.test_workflow_builder_preparation
def test_workflow_builder_preparation(tmp_path: Path) -> None:
    _write(
        tmp_path / "builder_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        builder = WorkflowBuilder()
        builder.add_node("PythonCodeNode", "prep", {"code": "result = 'prepared'"})
        # Note: Not calling .build() here
        """,
    )

    workflows = discover_workflows(str(tmp_path))

    # Should auto-build the workflow
    if workflows:
        workflow = list(workflows.values())[0]
        assert hasattr(workflow, "_nodes") or hasattr(workflow, "nodes")
    # Stronger than upstream's "if workflows": native returns exactly this, built.
    assert list(workflows) == ["builder_workflow"]
    assert isinstance(workflows["builder_workflow"], Workflow)
    assert _node_ids(workflows["builder_workflow"]) == {"prep"}


# upstream: I TestDiscoveryConvenienceFunction.test_discover_workflows_function
def test_discover_workflows_function(tmp_path: Path) -> None:
    _builder_file(tmp_path / "test_workflow.py", node="test", code="result = True")

    workflows = discover_workflows(str(tmp_path))

    assert isinstance(workflows, dict)
    assert len(workflows) > 0


# upstream: I TestDiscoveryConvenienceFunction.test_discover_workflows_without_base_path
# (run from tmp_path, never the real cwd; a workflow there proves the cwd is the default)
def test_discover_workflows_without_base_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    workflows = discover_workflows()
    assert isinstance(workflows, dict)
    assert workflows == {}

    _builder_file(tmp_path / "test_workflow.py", node="test", code="result = True")
    workflows = discover_workflows()
    assert isinstance(workflows, dict)
    assert list(workflows) == ["test_workflow"]


# ---------------------------------------------------------------------------
# E2E tests (E)
# ---------------------------------------------------------------------------


def _nexus(api_port: int, mcp_port: int):
    from nexus import Nexus

    return Nexus(
        api_port=api_port,
        mcp_port=mcp_port,
        auto_discovery=False,
        enable_durability=False,
    )


def _close(app) -> None:
    for method in ("shutdown", "close"):
        if hasattr(app, method):
            getattr(app, method)()
            return


# upstream: E TestWorkflowDiscoveryUserFlowE2E.test_user_creates_workflows_and_nexus_discovers_them
def test_user_creates_workflows_and_nexus_discovers_them(tmp_path: Path) -> None:
    workflows_dir = tmp_path / "workflows"
    # User workflow 1: Data validation
    _write(
        workflows_dir / "validate_data.py",
        '''
        from kailash.workflow.builder import WorkflowBuilder

        def create_validation_workflow():
            """User-created validation workflow"""
            workflow = WorkflowBuilder()

            workflow.add_node("PythonCodeNode", "validate", {
                "code": """
        if not data:
            result = {"valid": False, "error": "No data"}
        elif not isinstance(data, dict):
            result = {"valid": False, "error": "Data must be dict"}
        else:
            result = {"valid": True, "data": data}
        """
            })

            return workflow.build()

        validation = create_validation_workflow()
        ''',
    )
    # User workflow 2: Data transformation
    _write(
        workflows_dir / "transform_data.py",
        '''
        from kailash.workflow.builder import WorkflowBuilder

        transform_workflow = WorkflowBuilder()
        transform_workflow.add_node("PythonCodeNode", "transform", {
            "code": """
        # Transform data to uppercase
        transformed = {k: v.upper() if isinstance(v, str) else v
                       for k, v in input_data.items()}
        result = {"transformed": transformed, "count": len(transformed)}
        """
        })
        ''',
    )

    discovered = discover_workflows(str(tmp_path))

    assert len(discovered) >= 2
    assert _node_ids(discovered["transform_data.transform_workflow"]) == {"transform"}
    # create_validation_workflow is defined in the file and returns a value, so it is a
    # factory for our engine too; `validation` is a module-level Workflow instance.
    assert _node_ids(discovered["validate_data.create_validation_workflow"]) == {"validate"}
    assert _node_ids(discovered["validate_data.validation"]) == {"validate"}

    app = _nexus(api_port=8020, mcp_port=3020)
    try:
        for name, workflow in discovered.items():
            app.register(name, workflow)

        assert len(app._workflows) >= 2
        for name in discovered.keys():
            assert name in app._workflows
    finally:
        _close(app)


# upstream: E TestWorkflowDiscoveryUserFlowE2E.test_user_deploys_project_with_auto_discovery
def test_user_deploys_project_with_auto_discovery(tmp_path: Path) -> None:
    project_root = tmp_path
    workflows_dir = project_root / "app" / "workflows"
    _write(
        workflows_dir / "auth_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        auth_flow = WorkflowBuilder()
        auth_flow.add_node("PythonCodeNode", "authenticate", {
            "code": "result = {'authenticated': True, 'user_id': user}"
        })
        """,
    )
    _write(
        workflows_dir / "data_workflow.py",
        """
        from kailash.workflow.builder import WorkflowBuilder

        data_flow = WorkflowBuilder()
        data_flow.add_node("PythonCodeNode", "fetch_data", {
            "code": "result = {'data': [1, 2, 3], 'count': 3}"
        })
        """,
    )

    discovered = discover_workflows(str(project_root))

    assert len(discovered) >= 2
    assert set(discovered) == {"auth_workflow.auth_flow", "data_workflow.data_flow"}

    app = _nexus(api_port=8021, mcp_port=3021)
    try:
        for workflow_name, workflow in discovered.items():
            app.register(workflow_name, workflow)

        assert len(app._workflows) >= 2
    finally:
        _close(app)


# ---------------------------------------------------------------------------
# Parity with native discovery
# ---------------------------------------------------------------------------

# Tree of benign workflow files: every pattern, generic and specific object names,
# builders and Workflow instances, factories returning workflows or builders, a file
# matching two patterns, and two files in different folders producing the same name.
PARITY_TREE: dict[str, str] = {
    # workflows/*.py -- generic name "workflow" -> "orders"
    "workflows/orders.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "load_orders", {"code": "result = [1, 2]"})
        workflow.add_node("PythonCodeNode", "price_orders", {"code": "result = 3"})
        workflow.add_connection("load_orders", "result", "price_orders", "orders")
        """,
    # builder + its built Workflow, both generic -> one "reports"; plus "reports.summary"
    "workflows/reports.py": """
        from kailash.workflow.builder import WorkflowBuilder

        builder = WorkflowBuilder()
        builder.add_node("PythonCodeNode", "collect", {"code": "result = 1"})
        builder.add_node("PythonCodeNode", "render", {"code": "result = 2"})
        workflow = builder.build()

        summary = WorkflowBuilder()
        summary.add_node("PythonCodeNode", "summarise", {"code": "result = 'ok'"})
        """,
    # nothing discoverable: a factory needing arguments, plain data, a private builder
    "workflows/helpers.py": """
        from kailash.workflow.builder import WorkflowBuilder

        RETRIES = 3
        REGIONS = ["eu", "us"]

        def make_report(title):
            b = WorkflowBuilder()
            b.add_node("PythonCodeNode", title, {"code": "result = 0"})
            return b

        _private = WorkflowBuilder()
        _private.add_node("PythonCodeNode", "hidden", {"code": "result = 0"})
        """,
    # excluded by name in every pattern
    "workflows/__init__.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "package_init", {"code": "result = 0"})
        """,
    # not matched: patterns are not recursive
    "workflows/sub/deep.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "deep", {"code": "result = 0"})
        """,
    "lib/workflow_hidden.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "hidden", {"code": "result = 0"})
        """,
    "main.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "main_node", {"code": "result = 0"})
        """,
    # *.workflow.py -- "invoices.workflow" (wf) and "invoices.workflow.pipeline"
    "invoices.workflow.py": """
        from kailash.workflow.builder import WorkflowBuilder

        _builder = WorkflowBuilder()
        _builder.add_node("PythonCodeNode", "issue_invoice", {"code": "result = 1"})
        pipeline = _builder.build()

        wf = WorkflowBuilder()
        wf.add_node("PythonCodeNode", "void_invoice", {"code": "result = 0"})
        """,
    # workflow_*.py -- factories returning a Workflow and a WorkflowBuilder
    "workflow_shipping.py": """
        from kailash.workflow.builder import WorkflowBuilder

        def create_shipping_workflow():
            b = WorkflowBuilder()
            b.add_node("PythonCodeNode", "book_carrier", {"code": "result = 'dhl'"})
            b.add_node("PythonCodeNode", "track", {"code": "result = 'ok'"})
            return b.build()

        def create_label_builder():
            b = WorkflowBuilder()
            b.add_node("PythonCodeNode", "print_label", {"code": "result = 'label'"})
            return b
        """,
    # *_workflow.py -- a Workflow built directly
    "payments_workflow.py": """
        from kailash.workflow import Workflow

        flow = Workflow("payments-flow", name="payments")
        flow.add_node("charge", "PythonCodeNode", code="result = 10")
        flow.add_node("refund", "PythonCodeNode", code="result = -10")
        """,
    # matches both workflow_*.py and *_workflow.py
    "workflow_orders_workflow.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "reconcile", {"code": "result = 0"})

        def audit():
            b = WorkflowBuilder()
            b.add_node("PythonCodeNode", "audit_trail", {"code": "result = []"})
            return b
        """,
    # src/workflows/*.py -- also named "orders"; later pattern, so it wins natively
    "src/workflows/orders.py": """
        from kailash.workflow.builder import WorkflowBuilder

        workflow = WorkflowBuilder()
        workflow.add_node("PythonCodeNode", "fetch_orders_v2", {"code": "result = []"})
        """,
    "src/workflows/inventory.py": """
        from kailash.workflow.builder import WorkflowBuilder

        def build_restock():
            b = WorkflowBuilder()
            b.add_node("PythonCodeNode", "count_stock", {"code": "result = 5"})
            b.add_node("PythonCodeNode", "reorder", {"code": "result = True"})
            return b.build()

        stock_check = WorkflowBuilder()
        stock_check.add_node("PythonCodeNode", "check", {"code": "result = 1"})
        """,
    # app/workflows/*.py -- a factory with a generic name -> "billing"
    "app/workflows/billing.py": """
        from kailash.workflow.builder import WorkflowBuilder

        def wf():
            b = WorkflowBuilder()
            b.add_node("PythonCodeNode", "bill", {"code": "result = 42"})
            return b

        invoice_builder = WorkflowBuilder()
        invoice_builder.add_node("PythonCodeNode", "draft_invoice", {"code": "result = 1"})
        """,
}

EXPECTED_PARITY_NAMES = {
    "orders",
    "reports",
    "reports.summary",
    "invoices.workflow",
    "invoices.workflow.pipeline",
    "workflow_shipping.create_shipping_workflow",
    "workflow_shipping.create_label_builder",
    "payments_workflow.flow",
    "workflow_orders_workflow",
    "workflow_orders_workflow.audit",
    "inventory.build_restock",
    "inventory.stock_check",
    "billing",
    "billing.invoice_builder",
}

NATIVE_SCRIPT = """
import json, sys
from nexus.discovery import discover_workflows

found = discover_workflows(sys.argv[1])
out = {
    name: sorted([node_id, node.node_type] for node_id, node in wf.nodes.items())
    for name, wf in found.items()
}
print("NATIVE-DISCOVERY-JSON:" + json.dumps(out))
"""


def _native_discovery(base: Path, cwd: Path) -> dict[str, list[list[str]]]:
    proc = subprocess.run(
        [sys.executable, "-c", NATIVE_SCRIPT, str(base)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("NATIVE-DISCOVERY-JSON:")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0].split(":", 1)[1])


# Not ported from upstream: parity between our engine and native nexus.discovery.
def test_parity_with_native_discovery(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for rel, text in PARITY_TREE.items():
        _write(project / rel, text)
    native_cwd = tmp_path / "native_cwd"
    native_cwd.mkdir()

    native = _native_discovery(project, native_cwd)

    # Guard the fixture itself: native must see the tree the way this test assumes.
    assert set(native) == EXPECTED_PARITY_NAMES
    assert native["orders"] == [["fetch_orders_v2", "PythonCodeNode"]]

    ours = discover_workflows(str(project))

    assert sorted(ours) == sorted(native)
    for name, workflow in ours.items():
        assert isinstance(workflow, Workflow), (name, type(workflow))
        got = sorted([node_id, node.node_type] for node_id, node in workflow.nodes.items())
        assert got == native[name], name

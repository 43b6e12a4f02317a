"""Entry-point autoload, in fresh interpreters (the .pth hook runs at start-up).

No mocks: third-party plugins are real distributions made in tmp_path (a
``*.dist-info`` directory with METADATA and entry_points.txt, next to their
modules) and put on the subprocess's PYTHONPATH, so ``importlib-metadata``
finds them the way it finds any installed package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

BUILTIN_PLUGINS = ["auth", "monitoring", "rate_limit"]
OURS = "dataflow_compatible"
BROKEN = {
    "broken_at_import": "ndp_broken_mod:Plugin",
    "not_a_plugin": "ndp_good_mod:not_a_plugin",
    "raises_in_init": "ndp_good_mod:ExplodingPlugin",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEXUS_") and k not in {"PYTHONPATH", "PYTHONSTARTUP"}
    }
    env.update(extra)
    return env


def run_python(code: str, cwd: Path, env: dict[str, str], timeout: float = 90) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,  # Nexus loads *_plugin.py files from the working directory: keep it empty
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[nexus.plugins]\n{lines}")


@pytest.fixture
def third_party(tmp_path: Path) -> tuple[Path, Path]:
    """Two site directories with third-party Nexus plugins, good and broken.

    ``ndp-omega`` (in ``a``) declares ``omega_plugin`` and ``broken_at_import``;
    ``ndp-alpha`` (in ``b``) declares ``alpha_plugin``, ``not_a_plugin`` and
    ``raises_in_init``. The names sort differently from the distributions and
    from the path order, so the load order shows what decides it.
    """
    a, b = tmp_path / "site_a", tmp_path / "site_b"
    a.mkdir()
    b.mkdir()
    (a / "ndp_broken_mod.py").write_text(
        "raise RuntimeError('ndp_broken_mod is broken on purpose')\n"
    )
    (b / "ndp_good_mod.py").write_text(
        textwrap.dedent(
            """
            from nexus.plugins import NexusPlugin

            ORDER = []  # names, in the order the loader instantiated them


            class _Recording(NexusPlugin):
                plugin_name = ""

                def __init__(self):
                    ORDER.append(self.plugin_name)

                @property
                def name(self):
                    return self.plugin_name

                @property
                def description(self):
                    return "test plugin " + self.plugin_name

                def apply(self, nexus_instance):
                    nexus_instance.applied_by_test_plugin = self.plugin_name


            class AlphaPlugin(_Recording):
                plugin_name = "alpha_plugin"


            class OmegaPlugin(_Recording):
                plugin_name = "omega_plugin"


            class ExplodingPlugin(_Recording):
                def __init__(self):
                    raise RuntimeError("cannot construct ExplodingPlugin")


            def not_a_plugin():
                return "just a function"
            """
        )
    )
    make_distribution(
        a,
        "ndp-omega",
        {
            "omega_plugin": "ndp_good_mod:OmegaPlugin",
            "broken_at_import": BROKEN["broken_at_import"],
        },
    )
    make_distribution(
        b,
        "ndp-alpha",
        {
            "alpha_plugin": "ndp_good_mod:AlphaPlugin",
            "not_a_plugin": BROKEN["not_a_plugin"],
            "raises_in_init": BROKEN["raises_in_init"],
        },
    )
    return a, b


REGISTRY_PROBE = """
    import json, logging, sys

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append([record.name, record.levelname, record.getMessage()])

    logging.getLogger().addHandler(Collect())
    logging.getLogger().setLevel(logging.INFO)

    from nexus import Nexus
    from nexus.plugins import get_plugin_registry

    registry_list = get_plugin_registry().list()
    import ndp_good_mod

    app = Nexus(enable_durability=False)
    app.use_plugin("alpha_plugin")
    app.use_plugin("dataflow_compatible")
    print(json.dumps({
        "registry": registry_list,
        "order": ndp_good_mod.ORDER,
        "alpha_applied": getattr(app, "applied_by_test_plugin", None),
        "ours_installed": getattr(app, "_dataflow_compatible_plugin", None) is not None,
        "records": records,
    }))
"""


@pytest.mark.parametrize("path_order", ["a:b", "b:a"])
def test_plugins_load_in_name_order_and_broken_ones_are_skipped(
    tmp_path: Path, third_party: tuple[Path, Path], path_order: str
) -> None:
    a, b = third_party
    sites = {"a": str(a), "b": str(b)}
    pythonpath = os.pathsep.join(sites[key] for key in path_order.split(":"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = run_python(REGISTRY_PROBE, cwd, clean_env(PYTHONPATH=pythonpath))

    # Deterministic: sorted by entry-point name, whatever the path or distribution order.
    assert out["registry"] == BUILTIN_PLUGINS + ["alpha_plugin", OURS, "omega_plugin"]
    assert out["order"] == ["alpha_plugin", "omega_plugin"]

    # Nexus still works, with the good third-party plugin and ours.
    assert out["alpha_applied"] == "alpha_plugin"
    assert out["ours_installed"] is True

    # Each broken plugin is logged with its name and target, then skipped.
    warnings = [msg for name, level, msg in out["records"] if level == "WARNING"]
    for name, target in BROKEN.items():
        (message,) = [m for m in warnings if f"Skipped Nexus plugin {name!r}" in m]
        assert f"({target})" in message and "'nexus.plugins'" in message
    broken = [m for m in warnings if "'broken_at_import'" in m][0]
    assert "RuntimeError: ndp_broken_mod is broken on purpose" in broken
    exploding = [m for m in warnings if "'raises_in_init'" in m][0]
    assert "cannot construct ExplodingPlugin" in exploding
    assert "NexusPlugin" in [m for m in warnings if "'not_a_plugin'" in m][0]


def test_disabled_autoload_leaves_nexus_alone(tmp_path: Path) -> None:
    code = """
        import json, sys
        from nexus import Nexus

        app = Nexus(enable_durability=False)
        try:
            app.use_plugin("dataflow_compatible")
            error = None
        except ValueError as exc:
            error = str(exc)
        print(json.dumps({
            "error": error,
            "ours": sorted(m for m in sys.modules if m.startswith("nexus_dataflow_plugin")),
            "discovery_wrapped": hasattr(
                Nexus._auto_discover_workflows, "__nexus_dataflow_patched__"
            ),
        }))
    """
    out = run_python(code, tmp_path, clean_env(NEXUS_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert out["error"] == "Plugin 'dataflow_compatible' not found"
    # The start-up callable itself said no: nothing beyond the tiny hook module was imported.
    assert out["ours"] == ["nexus_dataflow_plugin", "nexus_dataflow_plugin.startup"]
    assert out["discovery_wrapped"] is False


def test_switch_set_in_code_before_importing_nexus_disables_autoload(tmp_path: Path) -> None:
    code = """
        import json, os, sys
        os.environ["NEXUS_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        from nexus import Nexus

        app = Nexus(enable_durability=False)
        try:
            app.use_plugin("dataflow_compatible")
            error = None
        except ValueError as exc:
            error = str(exc)
        print(json.dumps({"error": error}))
    """
    out = run_python(code, tmp_path, clean_env())
    assert out["error"] == "Plugin 'dataflow_compatible' not found"


def test_process_that_never_imports_nexus_pays_nothing(tmp_path: Path) -> None:
    code = """
        import json, sys
        import decimal, email.message, sqlite3  # ordinary work, no nexus
        from nexus_dataflow_plugin.startup import armed

        print(json.dumps({
            "loaded": sorted(
                m for m in sys.modules
                if m.split(".")[0] in {"nexus", "nexus_dataflow_plugin", "importlib_metadata",
                                       "kailash", "dataflow"}
            ),
            "finder_armed": armed(),
        }))
    """
    out = run_python(code, tmp_path, clean_env())
    # Only the tiny start-up hook is loaded (which proves the .pth ran); no autoload,
    # no entry-point scan (importlib_metadata), no Nexus.
    assert out["loaded"] == ["nexus_dataflow_plugin", "nexus_dataflow_plugin.startup"]
    assert out["finder_armed"] is True


def test_importing_nexus_installs_the_autoload_once(tmp_path: Path) -> None:
    code = """
        import json, sys
        before = "nexus_dataflow_plugin.autoload" in sys.modules
        import nexus.core  # a submodule first: the package import still triggers the hook
        from nexus_dataflow_plugin.startup import armed
        import nexus.plugins

        print(json.dumps({
            "before": before,
            "after": "nexus_dataflow_plugin.autoload" in sys.modules,
            "registry_wrapped": hasattr(
                nexus.plugins.get_plugin_registry, "__nexus_dataflow_patched__"
            ),
            "discovery_wrapped": hasattr(
                nexus.core.Nexus._auto_discover_workflows, "__nexus_dataflow_patched__"
            ),
            "finder_left": armed(),
        }))
    """
    out = run_python(code, tmp_path, clean_env())
    assert out == {
        "before": False,
        "after": True,
        "registry_wrapped": True,
        "discovery_wrapped": True,
        "finder_left": False,  # removes itself after firing
    }


def test_plugin_that_exits_at_import_is_skipped(tmp_path: Path) -> None:
    site, cwd = tmp_path / "site", tmp_path / "cwd"
    site.mkdir()
    cwd.mkdir()
    (site / "ndp_exit_mod.py").write_text("import sys\nsys.exit('ndp_exit_mod exits at import')\n")
    make_distribution(site, "ndp-exit", {"exits_at_import": "ndp_exit_mod:Plugin"})
    code = """
        import json, logging

        records = []

        class Collect(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())

        logging.getLogger().addHandler(Collect())
        from nexus import Nexus

        app = Nexus(enable_durability=False)
        app.use_plugin("dataflow_compatible")
        print(json.dumps({"survived": True, "records": records}))
    """
    out = run_python(code, cwd, clean_env(PYTHONPATH=str(site)))
    assert out["survived"] is True
    assert any("Skipped Nexus plugin 'exits_at_import'" in m for m in out["records"])


def test_a_normal_install_ships_the_start_up_hook(tmp_path: Path) -> None:
    """A regular (non-editable) install puts the .pth at site-packages' root, and it arms
    the hook without importing Nexus. Dependencies are not reinstalled: the check is about
    what this package's own wheel contains."""
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(repo)],
        check=True, timeout=600, capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert (Path(site) / "nexus_dataflow_plugin.pth").is_file()
    assert (Path(site) / "nexus_dataflow_plugin.start").is_file()
    probe = (
        "import sys; print('nexus_dataflow_plugin.startup' in sys.modules, "
        "'nexus' in sys.modules)"
    )
    out = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k != "NEXUS_DISABLE_PLUGIN_AUTOLOAD"},
    ).stdout.split()
    assert out == ["True", "False"]


# --- PEP 829: the .start file, as Python 3.15's site reads it -----------------------------------

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])

# What 3.15's site does with a site directory, written from PEP 829 for interpreters that
# predate it (run with -S, so the real site does nothing): path lines of every .pth are
# appended to sys.path; import lines run only from a .pth with no .start file of the same
# name (an editable install's own .pth still runs); then each non-blank, non-comment line
# of each .start file is an entry point ``pkg.mod:callable``, resolved with
# pkgutil.resolve_name and called with no arguments.
AS_3_15_SITE = """
    import json, os, pkgutil, sys
    site = {site!r}
    sys.path.append(site)
    names = sorted(n for n in os.listdir(site) if not n.startswith("."))
    def lines(name):
        with open(os.path.join(site, name), encoding="utf-8") as handle:
            return [l.strip() for l in handle if l.strip() and not l.lstrip().startswith("#")]
    starts = {{n[:-len(".start")] for n in names if n.endswith(".start")}}
    imports = []
    for name in names:
        if name.endswith(".pth"):
            for line in lines(name):
                if not line.startswith(("import ", "import\\t")):
                    sys.path.append(os.path.join(site, line))
                elif name[:-len(".pth")] not in starts:
                    imports.append(line)
    for line in imports:
        exec(line)
    entries = [e for name in names if name.endswith(".start") for e in lines(name)]
    for entry in entries:
        pkgutil.resolve_name(entry)()
    import nexus.core, nexus.plugins
    from nexus import Nexus
    app = Nexus(enable_durability=False)
    try:
        app.use_plugin("dataflow_compatible")
        error = None
    except ValueError as exc:
        error = str(exc)
    print(json.dumps({{
        "entries": entries,
        "pth_import_ran": any("nexus_dataflow_plugin.startup" in line for line in imports),
        "error": error,
        "discovery_wrapped": hasattr(
            nexus.core.Nexus._auto_discover_workflows, "__nexus_dataflow_patched__"
        ),
    }}))
"""


def run_as_3_15_site(cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    code = textwrap.dedent(AS_3_15_SITE).format(site=str(SITE_PACKAGES))
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_start_file_arms_the_autoload_as_python_3_15_site_would(tmp_path: Path) -> None:
    out = run_as_3_15_site(tmp_path, clean_env())
    assert out == {
        "entries": ["nexus_dataflow_plugin.startup:install"],
        "pth_import_ran": False,  # the .start file disabled the .pth's import line
        "error": None,
        "discovery_wrapped": True,
    }


def test_the_start_file_honours_the_switch_that_disables_autoload(tmp_path: Path) -> None:
    out = run_as_3_15_site(tmp_path, clean_env(NEXUS_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert out["error"] == "Plugin 'dataflow_compatible' not found"
    assert out["discovery_wrapped"] is False


def test_the_pth_line_and_the_start_file_call_the_same_callable() -> None:
    """Either file arms the same hook, so 3.15's switch from one to the other changes nothing."""
    (pth_line,) = (SITE_PACKAGES / "nexus_dataflow_plugin.pth").read_text().splitlines()
    (start_line,) = (SITE_PACKAGES / "nexus_dataflow_plugin.start").read_text().splitlines()
    module, func = start_line.split(":")
    assert pth_line.startswith("import ")  # the only kind of line site executes
    assert pth_line == f"import {module}; {module}.{func}()"


# -- the flag starts a worker as `import nexus` begins ------------------------------------

# Counts the workers this interpreter starts (the audit event of every subprocess.Popen)
# and lists the ones alive (its children running the worker module).
WORKERS_SEEN = """
    import json, os, sys

    popened = []
    sys.addaudithook(lambda event, args: popened.append(1) if event == "subprocess.Popen"
                     and "nexus_dataflow_plugin.worker" in list(args[1]) else None)

    def alive():
        me, found = os.getpid(), []
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as handle:
                for pid in handle.read().split():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                            if b"nexus_dataflow_plugin.worker" in cmd.read():
                                found.append(int(pid))
                    except OSError:
                        pass
        return sorted(found)
"""

FEATURE_WORKFLOW = """\
import os

from kailash.workflow.builder import WorkflowBuilder

if os.environ.get("NDP_FEATURE") == "on":  # set by the app after `import nexus`
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "run", {"code": "result = {'on': True}"})
    feature = builder.build()
"""


def small_project(root: Path) -> Path:
    """A project with one workflow file (one file warrants one worker) and a model file."""
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "hello.py").write_text(textwrap.dedent("""\
        from kailash.workflow.builder import WorkflowBuilder

        builder = WorkflowBuilder()
        builder.add_node("PythonCodeNode", "say", {"code": "result = {'text': 'hello'}"})
        hello = builder.build()
    """))
    (root / "workflows" / "models.py").write_text(textwrap.dedent(f"""\
        from dataflow import DataFlow

        db = DataFlow("sqlite:///{root / 'app.db'}")

        @db.model
        class Note:
            text: str
    """))
    (root / "workflows" / "feature.py").write_text(FEATURE_WORKFLOW)
    return root


def flag_env(**extra: str) -> dict[str, str]:
    return clean_env(NEXUS_DATAFLOW_COMPATIBLE="1", **extra)


def test_with_the_flag_a_worker_starts_as_nexus_is_imported_and_the_scan_uses_it(
    tmp_path: Path,
) -> None:
    project = small_project(tmp_path / "app")
    code = WORKERS_SEEN + """
    import nexus
    early = alive()
    from nexus import Nexus

    app = Nexus(enable_durability=False, auto_discovery=True)
    app._auto_discover_workflows()  # what start() runs
    print(json.dumps({"early": early, "popened": len(popened), "after": alive(),
                      "workflows": sorted(app._workflows)}))
    """
    out = run_python(code, project, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert len(out["early"]) == 1  # started by `import nexus`, before any Nexus existed
    assert out["popened"] == 1  # the scan started none of its own
    assert out["after"] == []  # and ended it with the scan
    assert "hello" in " ".join(out["workflows"])
    assert not any("feature" in name for name in out["workflows"])


def test_a_child_forked_after_import_nexus_or_install_uses_workers_of_its_own(
    tmp_path: Path,
) -> None:
    """A preforking server (gunicorn --preload) imports Nexus, even builds the app, then
    forks: the early worker and the pre-started pool are the parent's alone."""
    project = small_project(tmp_path / "app")
    code = WORKERS_SEEN + """
    import os
    import nexus
    from nexus import Nexus

    def discover(app, name):
        app._auto_discover_workflows()
        with open(name, "w") as handle:
            json.dump(sorted(app._workflows), handle)

    def in_child(run, name):
        pid = os.fork()
        if pid == 0:
            try:
                run(name)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    # forked after `import nexus` started the early worker
    in_child(lambda name: discover(Nexus(enable_durability=False, auto_discovery=True), name),
             "before_app.json")
    app = Nexus(enable_durability=False, auto_discovery=True)  # installs: workers start
    in_child(lambda name: discover(app, name), "after_install.json")  # forked after install
    discover(app, "parent.json")
    print(json.dumps({"popened": len(popened), **{name: json.load(open(name)) for name in (
        "before_app.json", "after_install.json", "parent.json")}}))
    """
    out = run_python(code, project, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    for who in ("before_app.json", "after_install.json", "parent.json"):
        assert "hello" in " ".join(out[who]), (who, out[who])
    # The parent's early worker served the parent's scan: no child used or ended it.
    assert out["popened"] == 1


def test_the_plugin_installed_by_hand_takes_the_worker_the_flag_started(tmp_path: Path) -> None:
    project = small_project(tmp_path / "app")
    code = WORKERS_SEEN + """
    from nexus import Nexus
    from nexus_dataflow_plugin import DataFlowCompatiblePlugin

    app = Nexus(enable_durability=False, auto_discovery=True)
    app.add_plugin(DataFlowCompatiblePlugin())
    app._auto_discover_workflows()
    print(json.dumps({"popened": len(popened), "workflows": sorted(app._workflows)}))
    """
    out = run_python(code, project, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert out["popened"] == 1
    assert "hello" in " ".join(out["workflows"])


def test_without_the_flag_importing_nexus_starts_no_worker(tmp_path: Path) -> None:
    project = small_project(tmp_path / "app")
    code = WORKERS_SEEN + """
    from nexus import Nexus

    app = Nexus(enable_durability=False, auto_discovery=False)
    print(json.dumps({"popened": len(popened), "alive": alive()}))
    """
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert run_python(code, project, env) == {"popened": 0, "alive": []}
    off = clean_env(NEXUS_DATAFLOW_COMPATIBLE="0", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert run_python(code, project, off) == {"popened": 0, "alive": []}


def test_a_nexus_without_auto_discovery_ends_the_early_worker(tmp_path: Path) -> None:
    project = small_project(tmp_path / "app")
    code = WORKERS_SEEN + """
    import nexus
    early = alive()
    app = nexus.Nexus(enable_durability=False, auto_discovery=False)
    print(json.dumps({"early": len(early), "after": alive()}))
    """
    out = run_python(code, project, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert out == {"early": 1, "after": []}


def test_a_file_sees_the_environment_the_app_set_after_importing_nexus(tmp_path: Path) -> None:
    """The early worker started with the environment of `import nexus`; a file must see
    the one of the scan (as native discovery would), so that worker is not used."""
    project = small_project(tmp_path / "app")
    code = WORKERS_SEEN + """
    import os
    import nexus
    os.environ["NDP_FEATURE"] = "on"  # e.g. load_dotenv() after the imports
    app = nexus.Nexus(enable_durability=False, auto_discovery=True)
    app._auto_discover_workflows()
    print(json.dumps({"popened": len(popened), "workflows": sorted(app._workflows)}))
    """
    out = run_python(code, project, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert any("feature" in name for name in out["workflows"])
    assert out["popened"] == 2  # the early one, killed; one started with the new environment


def test_an_early_worker_for_another_directory_is_not_used(tmp_path: Path) -> None:
    project = small_project(tmp_path / "app")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = WORKERS_SEEN + f"""
    import os
    import nexus
    os.chdir({str(project)!r})  # the project is not where `import nexus` ran
    app = nexus.Nexus(enable_durability=False, auto_discovery=True)
    app._auto_discover_workflows()
    print(json.dumps({{"popened": len(popened), "alive": alive(),
                      "workflows": sorted(app._workflows)}}))
    """
    out = run_python(code, elsewhere, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert out["popened"] == 2
    assert out["alive"] == []
    assert "hello" in " ".join(out["workflows"])


def test_a_workflow_file_that_imports_nexus_starts_no_workers_in_its_process(
    tmp_path: Path,
) -> None:
    project = small_project(tmp_path / "app")
    (project / "workflows" / "imports_nexus_workflow.py").write_text(textwrap.dedent("""\
        import os

        import nexus  # noqa: F401 - the flag is inherited: no worker may start here
        from kailash.workflow.builder import WorkflowBuilder

        me = os.getpid()
        children = [pid for tid in os.listdir(f"/proc/{me}/task")
                    for pid in open(f"/proc/{me}/task/{tid}/children").read().split()]
        if not children:
            builder = WorkflowBuilder()
            builder.add_node("PythonCodeNode", "alone", {"code": "result = {}"})
            alone = builder.build()
    """))
    code = WORKERS_SEEN + """
    import nexus
    app = nexus.Nexus(enable_durability=False, auto_discovery=True)
    app._auto_discover_workflows()
    print(json.dumps({"popened": len(popened), "workflows": sorted(app._workflows)}))
    """
    out = run_python(code, project, flag_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert any("alone" in name for name in out["workflows"]), out
    assert out["popened"] == 1

"""Ships the start-up files into site-packages, for normal and editable installs.

``nexus_dataflow_plugin.pth`` (an import line, for Pythons before 3.15) and
``nexus_dataflow_plugin.start`` (PEP 829, 3.15+, which then ignores the .pth's
import line) both arm the entry-point autoload (see nexus_dataflow_plugin/startup.py).
Everything else about the package is declared in pyproject.toml.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

START_UP_FILES = ("nexus_dataflow_plugin.pth", "nexus_dataflow_plugin.start")


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        target = self.build_lib
        if getattr(self, "editable_mode", False):
            # Editable wheels ignore build_lib; the install dir is the wheel's root.
            target = self.get_finalized_command("install").install_lib
        for name in START_UP_FILES:
            self.copy_file(name, os.path.join(target, name), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        shipped = [os.path.join(self.build_lib, name) for name in START_UP_FILES]
        return super().get_outputs(include_bytecode) + shipped


setup(cmdclass={"build_py": build_py_with_pth})

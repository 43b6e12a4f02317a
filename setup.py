"""Ships ``nexus_dataflow_plugin.pth`` into site-packages, for normal and editable installs.

The .pth line arms the entry-point autoload (see nexus_dataflow_plugin/_startup.py).
Everything else about the package is declared in pyproject.toml.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "nexus_dataflow_plugin.pth"


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        target = self.build_lib
        if getattr(self, "editable_mode", False):
            # Editable wheels ignore build_lib; the install dir is the wheel's root.
            target = self.get_finalized_command("install").install_lib
        self.copy_file(PTH, os.path.join(target, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": build_py_with_pth})

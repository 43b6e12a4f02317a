"""Deliberately broken: stock Nexus discovery would exit the whole server here.

With the plugin it runs in an isolated worker and is reported as an error.
"""

import sys

sys.exit("this file exits at import")

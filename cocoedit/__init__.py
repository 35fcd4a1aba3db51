"""cocoedit: region-regularized RL (CoCoEdit) for instruction-based image editors.

Every part of the project imports as `cocoedit.<part>` (`cocoedit.actors`, `cocoedit.rewards`,
`cocoedit.learner`, `cocoedit.protos`, `cocoedit.cluster`), so installing it adds one top-level name
to site-packages instead of five generic ones. In a checkout the parts are folders at the top of the
repository, beside this one; installed, they are inside it. Both resolve through `__path__` below.
This package's own modules (`telemetry`, `loopback`) are the bottom layer: they import no other part.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_HERE, "actors")):  # a checkout: the parts sit one folder up
    __path__.append(os.path.dirname(_HERE))  # noqa: F821 - __path__ is defined in a package's __init__

"""cocoedit: region-regularized RL (CoCoEdit) for instruction-based image editors.

Every part of the project imports as `cocoedit.<part>` (`cocoedit.actors`, `cocoedit.rewards`,
`cocoedit.learner`, `cocoedit.protos`, `cocoedit.cluster`), so installing it adds one top-level name
to site-packages instead of five generic ones. In a checkout the parts are folders at the top of the
repository; `cocoedit/<part>` is a symbolic link to each, so Python, type checkers and IDEs all resolve
`cocoedit.<part>` by plain paths (docs/architecture.md, "One importable name"). A part refuses to be
imported under its bare name (`import actors`): one module, one name.
This package's own modules (`telemetry`, `loopback`, `ranges`) are the bottom layer: they import no other part.
"""

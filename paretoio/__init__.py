"""What ``paretopipe`` and ``analysis`` share, at the bottom of both: small, dependency-free
helpers that neither package may own, since ``analysis`` never imports ``paretopipe`` and
``paretopipe`` should not pull in ``analysis`` (pandas, SciPy) to write a file.

- :mod:`paretoio.files`: the atomic file writer.

It imports nothing but the standard library. docs/design.md has the layering.
"""

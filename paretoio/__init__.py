"""What ``paretopipe`` and ``analysis`` share, at the bottom of both: small, dependency-free
helpers that neither package may own, since ``analysis`` never imports ``paretopipe`` and
``paretopipe`` should not pull in ``analysis`` (pandas, SciPy) to write a file.

- :mod:`paretoio.files`: the atomic file writer (standard library only);
- :mod:`paretoio.schema`: the file formats' JSON Schemas and their checker;
- :mod:`paretoio.pareto`: objective senses and non-dominated sorting (NumPy), with which
  ``paretopipe.predict`` and ``analysis.frontier`` both rank;
- :mod:`paretoio.stats`: the Student-t 95% interval of a mean (SciPy, imported when used), which
  ``analysis`` reports and ``repeats=auto`` stops on.

This package imports none of its modules. docs/design.md has the layering.
"""

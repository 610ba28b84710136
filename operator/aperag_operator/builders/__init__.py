"""Pure builders: an :class:`~aperag_operator.builders.common.Instance` in, plain-dict Kubernetes objects out.

One module per child kind; :mod:`aperag_operator.builders.children` assembles the full desired set.
"""

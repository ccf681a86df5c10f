"""A provider module of a project's own that fails while it is imported."""

raise RuntimeError("this module is broken")

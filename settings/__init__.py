"""The host project's settings modules: base, dev (the default), test and prod."""

"""Tools for the project itself, not the library: ``bench.py`` (``make bench``) and ``buildlock.py``
(one builder of a shared file at a time, for the Makefile)."""

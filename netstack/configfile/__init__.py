"""Configuration files: ``-readconfig`` (QEMU 7.2's format) and ``-writeconfig``.

:mod:`.reader` reads QEMU's INI-style files into command-line option texts;
:mod:`.writer` renders the running configuration of a daemon in the same format.
See ``docs/config-files.md``.
"""

"""This project's Lava processes, one subpackage each (``<name>/process.py`` +
``<name>/models.py``, lava's own layout).

Why subpackages: Lava's process-model discovery
(``ProcGroupDiGraphs._find_proc_models``) executes every module in the
directory of a process's module as a top-level module; a process living in
``hardware/`` would make it execute (and warn "Cannot import module" about)
every file of ``hardware/``. Here it only sees the process and its models.
"""

"""The Lava runtime: builds a Lava network from the integer IR or a .net file, runs it on
``Loihi2SimCfg`` or ``Loihi2HwCfg`` with probes, and owns this project's Lava processes
(``procs``)."""

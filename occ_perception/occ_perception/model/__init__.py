"""The occupancy network: configs, OccNet, splat tables and the FlashOCC checkpoint import.

Modules, each readable in one sitting:

- :mod:`.config`: :class:`ModelConfig` and the named configs (``flashocc-m0``, ``flashocc-m1``, ``tiny``).
- :mod:`.norm`: the normalisation layer (BatchNorm or GroupNorm).
- :mod:`.backbone`: ResNet image encoder and image neck.
- :mod:`.splat_tables`: the view transform's splat tables, built on the host with numpy only.
- :mod:`.splat`: :class:`Splat`, the torch module that runs those tables in the graph.
- :mod:`.splat_reference`: direct ``index_add`` splats, the reference for tests and the benchmark.
- :mod:`.bev`: history warp, BEV encoder and neck.
- :mod:`.heads`: channel-to-height semantic and flow heads.
- :mod:`.network`: :class:`OccNet`, the exported graph.
- :mod:`.flashocc`: FlashOCC checkpoint import.

Import from the modules themselves: this package's ``__init__`` imports nothing, so that
the torch-free parts (:mod:`.config`, :mod:`.splat_tables`, the CLI's argument parsing) load where torch is absent.
"""

"""The occupancy network: configs, OccNet, splat tables and the FlashOCC checkpoint import.

Modules, each readable in one sitting:

- :mod:`.config`: :class:`ModelConfig` and the named configs (``flashocc-m0``, ``flashocc-m1``, ``tiny``).
- :mod:`.backbone`: ResNet image encoder and image neck.
- :mod:`.splat`: the view transform's splat as host-built tables (:func:`build_splat_tables`).
- :mod:`.bev`: history warp, BEV encoder and neck.
- :mod:`.heads`: channel-to-height semantic and flow heads.
- :mod:`.network`: :class:`OccNet`, the exported graph.
- :mod:`.flashocc`: FlashOCC checkpoint import.

Import from the modules themselves: this package's ``__init__`` imports nothing, so that
the torch-free parts (:mod:`.config`, the CLI's argument parsing) load where torch is absent.
"""

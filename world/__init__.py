"""The built-in world: a procedural, captioned image generator (:mod:`world.generate`) and the reproducible
pretraining of the tiny CLIP shipped with the suite (:mod:`world.pretrain`); design and numbers in ``WORLD.md``.

It sits above :mod:`protocols`: the generator writes its datasets in the CoOp layout and declares them as
:class:`protocols.datasets.DatasetSpec`; :mod:`protocols.datasets` looks the generator up by module name
(``WORLD_MODULE``) when a ``world_*`` dataset is asked for, without importing this package otherwise.
"""

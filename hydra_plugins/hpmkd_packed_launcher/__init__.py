"""``hydra/launcher=packed``: sweep members whose student fits can be packed train as one
vmapped model (``hpmkd.engine.packed``); the others run one after another as with Hydra's basic
launcher. Modules starting with an underscore load only when a sweep is launched."""

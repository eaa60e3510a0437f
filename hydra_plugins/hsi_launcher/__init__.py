"""hsi's Hydra plugins (Hydra finds launchers only under the ``hydra_plugins`` namespace)."""

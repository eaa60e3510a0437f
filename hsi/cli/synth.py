"""`hsi-synth key=value ...`: write the embedded synthetic source (conf/synth.yaml).

    hsi-synth                                   10 classes into data/synthetic
    hsi-synth out=data/synth20 num_classes=20 workers=2
    hsi-synth train_box_fraction=1.0            every train image boxed (default: [0.3, 0.55] per class, ~ImageNet)

Rerunning with the same keys does nothing; other keys on a complete `out` is an error.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from hsi.cli import CONF_DIR
from hsi.console import quiet_console
from hsi.sources.synthetic import read_counts, write_synthetic


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="synth")
def main(cfg: DictConfig) -> None:
    keys = OmegaConf.to_container(cfg, resolve=True)
    quiet_console(keys.pop("verbose"))
    out = write_synthetic(keys.pop("out"), **keys)
    counts = read_counts(out)
    print(
        f"synthetic source at {out.resolve()}: {counts['classes']} classes, "
        f"{counts['train_images']} train images ({counts['train_with_boxes']} with boxes), "
        f"{counts['val_images']} val images"
    )


if __name__ == "__main__":
    main()

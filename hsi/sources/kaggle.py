"""Boxes from the Kaggle ImageNet localisation files `LOC_train_solution.csv` / `LOC_val_solution.csv`.

Each row is `ImageId,PredictionString`; the string repeats `wnid xmin ymin xmax ymax` in absolute
pixels, e.g. `n01751748 111 108 441 375 n01751748 23 40 80 90`. Coordinates are returned as written.
"""

from __future__ import annotations

import csv
import os

from hsi.sources.record import Box

HEADER = ("ImageId", "PredictionString")


def _parse_prediction(text: str) -> list[tuple[str, Box]]:
    tokens = text.split()
    if len(tokens) % 5:
        raise ValueError(f"{len(tokens)} fields, expected groups of 5 (wnid xmin ymin xmax ymax)")
    boxes = []
    for i in range(0, len(tokens), 5):
        name = tokens[i]
        try:
            box = tuple(float(t) for t in tokens[i + 1 : i + 5])
        except ValueError:
            raise ValueError(
                f"box {i // 5} of {name}: non-numeric coordinates {tokens[i + 1 : i + 5]}"
            ) from None
        boxes.append((name, box))
    return boxes


def read_loc_solution(
    csv_path: str | os.PathLike, errors: dict[str, str] | None = None
) -> dict[str, list[tuple[str, Box]]]:
    """image_id -> [(wnid, (xmin, ymin, xmax, ymax)), ...] from a LOC_*_solution.csv file.

    A wrong header raises ValueError naming the file. A malformed row raises too, unless `errors`
    is given: then the row's image id maps to the reason there and the row is left out, so a
    reader can skip that one image and go on. Rows repeating an image id add their boxes.
    """
    result: dict[str, list[tuple[str, Box]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:2]) != HEADER:
            raise ValueError(f"{csv_path}: header is {header}, expected {','.join(HEADER)}")
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            image_id = row[0].strip()
            try:
                if len(row) != 2 or not image_id:
                    raise ValueError(f"{len(row)} columns, expected 2 ({','.join(HEADER)})")
                boxes = _parse_prediction(row[1])
            except ValueError as e:
                reason = f"{csv_path} line {line}: {e}"
                if errors is None:
                    raise ValueError(reason) from None
                errors[image_id or f"<line {line}>"] = reason
                continue
            result.setdefault(image_id, []).extend(boxes)
    return result

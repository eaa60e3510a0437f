"""Text queries from class names, unique where ImageNet repeats a name (paper 004, §2 queries the
detector with the class name).

ImageNet-1k has classes whose first synonym is the same word: two "crane" (the bird n02012849,
the machine n03126707), two "maillot" (n03710637, n03710721 "maillot, tank suit"), and
"Cardigan" (the corgi) next to "cardigan" (the sweater). A detector asked "a photo of a crane"
for both cannot tell them apart, so a repeated name (compared case-insensitively) is replaced,
in this order, by:

1. the wording of KNOWN (ImageNet's repeated names, by wnid);
2. the class's first other synonym that no other class uses ("tank suit");
3. the name itself for the first class of the group (sorted by wnid) that is still left, and
   "<name> <wnid>" for the others -- unique, if not descriptive.

A prompt longer than the text model's limit becomes the bare name, then loses the name's
leading words until it fits (`fit_prompt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hsi.sources.record import ClassInfo

DEFAULT_TEMPLATE = "a photo of a {}"

# ImageNet's repeated first synonyms, worded so that a text encoder tells them apart.
KNOWN = {
    "n02012849": "crane bird",
    "n03126707": "construction crane",
    "n03710637": "maillot tights",
    "n03710721": "tank suit",
    "n02113186": "Cardigan Welsh corgi",
    "n02963159": "cardigan sweater",
}


def unique_names(classes: Sequence[ClassInfo]) -> dict[int, str]:
    """Class index -> a name no other class has (case-insensitively); see the module doc."""
    groups: dict[str, list[ClassInfo]] = {}
    for c in classes:
        groups.setdefault(c.name.lower(), []).append(c)
    used = {c.name.lower() for c in classes}
    names: dict[int, str] = {}
    for group in groups.values():
        if len(group) == 1:
            names[group[0].index] = group[0].name
            continue
        left = []
        for c in sorted(group, key=lambda c: c.wnid):
            known = KNOWN.get(c.wnid)
            other = next(
                (s for s in c.synonyms[1:] if s.lower() not in used),
                None,
            )
            chosen = known if known and known.lower() not in used else other
            if chosen is None:
                left.append(c)
            else:
                names[c.index] = chosen
                used.add(chosen.lower())
        for i, c in enumerate(left):
            names[c.index] = c.name if i == 0 else f"{c.name} {c.wnid}"
    return names


def fit_prompt(
    template: str, name: str, count_tokens: Callable[[str], int] | None, max_tokens: int | None
) -> str:
    """`template` filled with `name`, made to fit `max_tokens` as `count_tokens` counts.

    Too long: the bare name; still too long: its leading words dropped one by one (an English
    noun phrase ends in its head: "great white shark" -> "white shark" -> "shark"). A single
    word that is still too long is kept; the detector's tokenizer truncates it.
    """
    prompt = template.format(name)
    if max_tokens is None:
        return prompt
    count = count_tokens or (lambda text: len(text.split()))
    if count(prompt) <= max_tokens:
        return prompt
    words = name.split()
    while len(words) > 1 and count(" ".join(words)) > max_tokens:
        words.pop(0)
    return " ".join(words)


def class_prompts(
    classes: list[ClassInfo],
    template: str = DEFAULT_TEMPLATE,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> dict[int, str]:
    """Class index -> text query; unique across classes, at most `max_tokens` long.

    `count_tokens` counts a text's tokens as the detector's tokenizer does (special tokens
    included); without it, words are counted (a lower bound of the tokens).
    """
    if "{}" not in template:
        raise ValueError(
            f"detector.template={template!r}: needs a '{{}}' where the class name goes"
        )
    names = unique_names(classes)
    prompts = {
        i: fit_prompt(template, n, count_tokens, max_tokens) for i, n in sorted(names.items())
    }
    seen: dict[str, int] = {}
    for i, p in sorted(prompts.items()):
        if p.lower() in seen:
            raise ValueError(
                f"class prompts {seen[p.lower()]} and {i} are both {p!r} after cutting them to "
                f"{max_tokens} tokens; use a shorter detector.template"
            )
        seen[p.lower()] = i
    return prompts


def detector_prompts(detector, classes: list[ClassInfo], template: str = DEFAULT_TEMPLATE):
    """class_prompts with the detector's own token limit and counter, when it has them."""
    return class_prompts(
        classes,
        template,
        getattr(detector, "max_tokens", None),
        getattr(detector, "count_tokens", None),
    )

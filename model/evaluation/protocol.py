"""Are two sets of runs comparable? The protocol facts of a run, and what differs between two.

A difference in F1 means something only when both sides were scored the same way: the same
label threshold, the same held-out (and training) subjects of each fold, the same AUs, camera,
landmark source, task, input size and model-selection split. These *protocol* facts are read
from what each run recorded (its ``config.json``: ``train_config``, ``data``, with the result
summary as a fallback for the AUs and test subjects). Everything else in the recorded training
configuration (lr, epochs, backbone, seed ...) is *recipe*: what the comparison is about, and
listed so a reader sees what differs rather than two identical-looking recipe lines.

A fact a run did not record (older runs, moved folders) is "unverified", never guessed equal.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

Run = tuple[dict[str, Any], dict[str, Any]]     # (config.json record, result summary)

#: train_config keys that are protocol facts (compared by ``protocol_differences``), not recipe.
#: The manifest is compared by its folds' subjects; its path stays among the recipe differences
#: (two copies of one folds.json are the same protocol).
PROTOCOL_KEYS = ("threshold", "cameras", "task", "image_size", "select_on", "fold")


def _known(*values: Any) -> Any:
    return next((v for v in values if v not in (None, "", [], {})), None)


def _subjects(data: dict[str, Any], result: dict[str, Any], split: str) -> Any:
    """Sorted subjects of ``split`` ('test' or 'training': train and val together)."""
    recorded = data.get("subjects") or {}
    if split == "test":
        names = recorded.get("test") or ((result.get("test") or {}).get("per_subject")
                                         or {}).get("subjects")
    else:
        names = [*(recorded.get("train") or []), *(recorded.get("val") or [])] or None
    return tuple(sorted(map(str, names))) if names else None


def protocol_facts(record: dict[str, Any], result: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """What decides how a run was scored, by readable name (None: not recorded)."""
    result = result or {}
    tc, data = record.get("train_config") or {}, record.get("data") or {}
    alignment = (data.get("alignment") or {}).get("config") or {}
    cameras = _known(tc.get("cameras"), alignment.get("camera"))
    aus = _known(data.get("au_ids"), (result.get("test") or {}).get("au_ids"))
    return {
        "label threshold": _known(data.get("threshold"), tc.get("threshold")),
        "AUs": tuple(aus) if aus else None,
        "camera": tuple([cameras] if isinstance(cameras, str) else cameras) if cameras else None,
        "landmark source": _known(alignment.get("landmark_source")),
        "task": _known(tc.get("task")),
        "input size": _known(data.get("image_size"), tc.get("image_size")),
        "model selection": _known(tc.get("select_on")),
        "test subjects": _subjects(data, result, "test"),
        "training subjects": _subjects(data, result, "training"),
    }


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _side_values(facts: Iterable[tuple[Any, dict[str, Any]]], name: str) -> dict[Any, set]:
    """fold -> distinct known values of fact ``name`` (per-fold facts), or {None: values}."""
    out: dict[Any, set] = {}
    for fold, f in facts:
        key = fold if name.endswith("subjects") else None
        if f.get(name) is not None:
            out.setdefault(key, set()).add(f[name])
    return out


def protocol_differences(name_a: str, runs_a: Sequence[Run], name_b: str, runs_b: Sequence[Run]
                         ) -> tuple[list[str], list[str]]:
    """(differences, unverified facts) between the two sides, and within each side, one line
    each, naming the fact and the values (per fold for the subjects)."""
    facts = {side: [((res or {}).get("fold"), protocol_facts(rec, res)) for rec, res in runs]
             for side, runs in ((name_a, runs_a), (name_b, runs_b))}
    differences, unverified = [], []
    for name in protocol_facts({}):
        va, vb = _side_values(facts[name_a], name), _side_values(facts[name_b], name)
        for side, values in ((name_a, va), (name_b, vb)):
            for key, vals in values.items():
                if len(vals) > 1:
                    where = f" (fold {key})" if key is not None else ""
                    differences.append(f"{name}{where}: {' / '.join(sorted(map(_show, vals)))} "
                                       f"within {side}")
        for key in sorted(set(va) & set(vb), key=str):
            if va[key] != vb[key]:
                where = f" (fold {key})" if key is not None else ""
                shown_a, shown_b = (" / ".join(sorted(map(_show, v[key]))) for v in (va, vb))
                differences.append(f"{name}{where}: {shown_a} in {name_a}, {shown_b} in {name_b}")
        if not set(va) & set(vb):
            unverified.append(name)
    return differences, unverified


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """The recipe settings of a record: train_config, then model_config keys it lacks."""
    tc, mc = record.get("train_config") or {}, record.get("model_config") or {}
    out = {k: v for k, v in mc.items() if k not in tc}
    out.update(tc)
    return out


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def recipe_differences(name_a: str, records_a: Sequence[dict[str, Any]], name_b: str,
                       records_b: Sequence[dict[str, Any]], ignore: Iterable[str] = ()
                       ) -> list[str]:
    """``key: values in A vs values in B`` for every recorded recipe setting whose values differ
    between the sides (``ignore``: runtime options; the protocol keys are left out as well)."""
    skip = set(ignore) | set(PROTOCOL_KEYS)
    flat_a, flat_b = [_flat(r) for r in records_a], [_flat(r) for r in records_b]
    keys = dict.fromkeys(k for f in [*flat_a, *flat_b] for k in f if k not in skip)
    out = []
    for key in keys:
        va = {_hashable(f.get(key)) for f in flat_a}
        vb = {_hashable(f.get(key)) for f in flat_b}
        if va != vb:
            show = (lambda vs: " / ".join(sorted(map(str, vs))))
            out.append(f"{key}: {show(va)} in {name_a}, {show(vb)} in {name_b}")
    return out

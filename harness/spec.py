"""Variant specs: `variants/<name>.toml` loaded into frozen dataclasses and validated.

A variant is an upstream training script at a pinned commit plus patches and arguments
(`[upstream]`), and/or arguments for the project's own mini-track trainer (`[mini]`).
Any unknown key, missing field or wrong type is a `UserError` naming the file and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Time limits of slowrun's tracks (minutes), used when a spec does not state its own.
TRACK_LIMITS_MIN: dict[str, float | None] = {
    "tiny": 15.0,
    "limited": 60.0,
    "one_hour": 60.0,
    "two_hour": 120.0,
    "unlimited": None,
    "mini": None,
}
TRACKS = ("mini", "upstream")  # how a variant is executed; not to be confused with leaderboard tracks
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Track:
    """The leaderboard track a variant competes on."""

    name: str  # e.g. "two_hour"
    time_limit_min: float | None  # training-time cap of the track, None = uncapped

    @property
    def time_limit_s(self) -> float | None:
        return None if self.time_limit_min is None else self.time_limit_min * 60.0


@dataclass(frozen=True)
class Claim:
    """A published figure: the author's claim for this variant, or a record to beat."""

    val_loss: float
    source: str  # URL of the PR / log where it was reported
    kind: str = "claim"  # "claim" (this variant's own result) or "record" (the leaderboard record of the time)
    training_minutes: float | None = None
    val_loss_max: float | None = None  # when a range was reported (e.g. two runs 3.1926-3.1931)
    commit: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class UpstreamSpec:
    """How to run the real upstream script (8 GPUs)."""

    repo: str  # git URL (overridable with --repo)
    commit: str  # full 40-hex SHA
    script: str  # path inside the repo, e.g. two_hour/train.py
    ref: str | None = None  # where the commit can be fetched from, e.g. refs/pull/79/head
    args: tuple[str, ...] = ()
    patches: tuple[str, ...] = ()  # file names under variants/patches/, applied in order
    nproc_per_node: int = 8
    seed_flag: str | None = None  # pass the seed as this flag instead of rewriting the script


@dataclass(frozen=True)
class MiniSpec:
    """How to run the project's own miniature implementation on a CPU."""

    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    track: Track
    path: Path  # the TOML file it came from
    sha256: str  # hash of the TOML file bytes
    compare_to: str | None = None
    claims: tuple[Claim, ...] = ()
    upstream: UpstreamSpec | None = None
    mini: MiniSpec | None = None

    @property
    def own_claims(self) -> tuple[Claim, ...]:
        return tuple(c for c in self.claims if c.kind == "claim")

    @property
    def records(self) -> tuple[Claim, ...]:
        return tuple(c for c in self.claims if c.kind == "record")

    def patch_paths(self) -> list[Path]:
        if self.upstream is None:
            return []
        return [self.path.parent / "patches" / p for p in self.upstream.patches]


# ----------------------------------------------------------------------------- validation

# key -> (type(s), required). Types are checked exactly (bool is not an int here).
_TOP = {
    "name": (str, True),
    "description": (str, True),
    "compare_to": (str, False),
    "track": (dict, True),
    "claims": (list, False),
    "upstream": (dict, False),
    "mini": (dict, False),
}
_TRACK = {"name": (str, True), "time_limit_minutes": ((int, float), False)}
_CLAIM = {
    "val_loss": ((int, float), True),
    "source": (str, True),
    "kind": (str, False),
    "training_minutes": ((int, float), False),
    "val_loss_max": ((int, float), False),
    "commit": (str, False),
    "note": (str, False),
}
_UPSTREAM = {
    "repo": (str, True),
    "commit": (str, True),
    "script": (str, True),
    "ref": (str, False),
    "args": (list, False),
    "patches": (list, False),
    "nproc_per_node": (int, False),
    "seed_flag": (str, False),
}
_MINI = {"args": (list, False)}


def _check_table(data: dict[str, Any], schema: dict[str, tuple[Any, bool]], where: str, file: Path) -> None:
    for key in data:
        if key not in schema:
            hint = difflib.get_close_matches(key, list(schema), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else f"; allowed: {', '.join(schema)}"
            raise UserError(f"{file}: unknown key '{where}{key}'{extra}")
    for key, (types, required) in schema.items():
        if key not in data:
            if required:
                raise UserError(f"{file}: missing required key '{where}{key}'")
            continue
        value = data[key]
        tnames = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserError(f"{file}: key '{where}{key}' must be {tnames}, got {type(value).__name__} {value!r}")
        # TOML allows nan, inf and negative numbers; no loss, time or count here may be one
        if isinstance(value, (int, float)) and not 0 < value < math.inf:
            raise UserError(f"{file}: key '{where}{key}' must be a positive finite number, got {value!r}")


def _str_list(value: list[Any], key: str, file: Path) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise UserError(f"{file}: key '{key}' must be a list of strings, got {value!r}")
    return tuple(value)


def parse_spec(data: dict[str, Any], file: Path, raw: bytes = b"") -> VariantSpec:
    _check_table(data, _TOP, "", file)
    if data["name"] != file.stem:
        raise UserError(f"{file}: key 'name' is '{data['name']}' but the file is {file.name}; make them match")
    _check_table(data["track"], _TRACK, "track.", file)
    tname = data["track"]["name"]
    limit = data["track"].get("time_limit_minutes", TRACK_LIMITS_MIN.get(tname))
    track = Track(tname, None if limit is None else float(limit))

    claims = []
    for i, c in enumerate(data.get("claims", [])):
        if not isinstance(c, dict):
            raise UserError(f"{file}: 'claims[{i}]' must be a table ([[claims]])")
        _check_table(c, _CLAIM, f"claims[{i}].", file)
        kind = c.get("kind", "claim")
        if kind not in ("claim", "record"):
            raise UserError(f"{file}: key 'claims[{i}].kind' must be 'claim' or 'record', got {kind!r}")
        claims.append(
            Claim(
                val_loss=float(c["val_loss"]),
                source=c["source"],
                kind=kind,
                training_minutes=None if "training_minutes" not in c else float(c["training_minutes"]),
                val_loss_max=None if "val_loss_max" not in c else float(c["val_loss_max"]),
                commit=c.get("commit"),
                note=c.get("note"),
            )
        )

    upstream = None
    if "upstream" in data:
        u = data["upstream"]
        _check_table(u, _UPSTREAM, "upstream.", file)
        if not _SHA_RE.match(u["commit"]):
            raise UserError(f"{file}: key 'upstream.commit' must be a full 40-character lowercase SHA, got {u['commit']!r}")
        upstream = UpstreamSpec(
            repo=u["repo"],
            commit=u["commit"],
            script=u["script"],
            ref=u.get("ref"),
            args=_str_list(u.get("args", []), "upstream.args", file),
            patches=_str_list(u.get("patches", []), "upstream.patches", file),
            nproc_per_node=u.get("nproc_per_node", 8),
            seed_flag=u.get("seed_flag"),
        )
        for p in upstream.patches:
            if not (file.parent / "patches" / p).is_file():
                raise UserError(f"{file}: key 'upstream.patches' names {p!r}, but {file.parent / 'patches' / p} does not exist")

    mini = None
    if "mini" in data:
        _check_table(data["mini"], _MINI, "mini.", file)
        mini = MiniSpec(args=_str_list(data["mini"].get("args", []), "mini.args", file))
    if upstream is None and mini is None:
        raise UserError(f"{file}: a variant needs an [upstream] or a [mini] section (or both)")

    return VariantSpec(
        name=data["name"],
        description=data["description"],
        track=track,
        path=file,
        sha256=hashlib.sha256(raw).hexdigest(),
        compare_to=data.get("compare_to"),
        claims=tuple(claims),
        upstream=upstream,
        mini=mini,
    )


def load_spec(file: Path) -> VariantSpec:
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise UserError(f"{file}: cannot read variant spec ({e.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: malformed TOML: {e}") from None
    return parse_spec(data, file, raw)


# ----------------------------------------------------------------------------- registry


@dataclass
class Registry:
    """All variants of one variants folder, cross-checked (compare_to must exist)."""

    root: Path
    variants: dict[str, VariantSpec] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.variants)

    def get(self, name: str) -> VariantSpec:
        if name in self.variants:
            return self.variants[name]
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names())}"
        raise UserError(f"unknown variant '{name}'{hint} (see `harness list`)")


def default_variants_dir() -> Path:
    return Path(os.environ.get("HARNESS_VARIANTS", "variants"))


def load_registry(root: Path | str | None = None) -> Registry:
    root = Path(root) if root is not None else default_variants_dir()
    if not root.is_dir():
        raise UserError(f"variants folder {root} not found; run from the project root or pass --variants DIR")
    reg = Registry(root)
    for file in sorted(root.glob("*.toml")):
        spec = load_spec(file)
        reg.variants[spec.name] = spec
    for spec in reg.variants.values():
        if spec.compare_to is not None and spec.compare_to not in reg.variants:
            raise UserError(f"{spec.path}: key 'compare_to' names unknown variant '{spec.compare_to}'")
    return reg


# ----------------------------------------------------------------------------- identity of a run


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_config(spec: VariantSpec, track: str, extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything that defines a run except its seed (and where the repo was fetched from)."""
    if track == "upstream":
        if spec.upstream is None:
            raise UserError(f"variant '{spec.name}' has no [upstream] section; use --track mini")
        u = spec.upstream
        return {
            "track": "upstream",
            "commit": u.commit,
            "script": u.script,
            "args": list(u.args) + list(extra_args),
            "patches": [{"name": p.name, "sha256": _sha_file(p)} for p in spec.patch_paths()],
            "nproc_per_node": u.nproc_per_node,
            "seed_flag": u.seed_flag,
        }
    if track == "mini":
        if spec.mini is None:
            raise UserError(f"variant '{spec.name}' has no [mini] section; use --track upstream")
        return {"track": "mini", "args": list(spec.mini.args) + list(extra_args)}
    raise UserError(f"unknown track '{track}'; use mini or upstream")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def config_key(spec: VariantSpec, track: str, extra_args: tuple[str, ...] = ()) -> str:
    return _digest(run_config(spec, track, extra_args))


def run_key(config: str, seed: int) -> str:
    return _digest({"config_key": config, "seed": seed})

"""params.yaml on disk: read and validate it, write it, and merge a profile into it.

params.yaml is read as YAML 1.2, as DVC reads it (dvc.utils.serialize; `dvc exp run -S` and
`dvc params diff`), not as YAML 1.1, which reads an unquoted `no` as false. It is written through
ruamel's round trip, as DVC writes it (and squeeze.config.dvcyaml writes dvc.yaml), so a write
keeps its comments, where the reasons for values live, and its key order, and rewrites only the
values that change. Nothing is written that does not validate (the schema, then the class_path
allow-list): a refused change leaves the file byte for byte as it was.

Profiles (profiles/*.yaml) are overlays of a few keys that `squeeze profile NAME` merges into
params.yaml, their comments with them.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from dvc.utils.serialize import loads_yaml
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedBase, CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.tokens import CommentToken

from squeeze.config.allowlist import check_class_paths
from squeeze.config.errors import ParamsError
from squeeze.config.params import Params, validate

PARAMS_FILE = "params.yaml"


PROFILES_DIR = "profiles"


REPLACE_KEY = "replace"  # a profile's list of dotted keys it sets whole (apply_profile)


class _Representer(RoundTripRepresenter):
    """ruamel's round-trip representer, spelling null out (it leaves a mapping's null empty)."""

    def represent_none(self, data: None) -> Any:
        return self.represent_scalar("tag:yaml.org,2002:null", "null")


_Representer.add_representer(type(None), _Representer.represent_none)  # this class's only


def round_trip_yaml() -> YAML:
    """ruamel's round trip, as DVC's (dvc.utils.serialize.modify_yaml), set so that a line the
    write does not change stays as it was: quotes kept, null spelled out, no wrapping at 80
    columns, a block list indented under its key (as params.yaml writes them)."""
    yaml = YAML()
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def parse(text: str, where: str, round_trip: bool = False) -> dict[str, Any]:
    """A YAML 1.2 mapping from text, failing with where and the line on a syntax error.

    round_trip: ruamel's round-trip document (mappings and lists that carry their
    comments and style, for dump) instead of plain dicts and lists."""
    try:
        data = round_trip_yaml().load(text) if round_trip else loads_yaml(text)
    except YAMLError as err:
        raise ParamsError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    return data


def dump(doc: dict[str, Any]) -> str:
    """A round-trip document (or plain data) as YAML text, its comments and order kept."""
    stream = io.StringIO()
    round_trip_yaml().dump(doc, stream)
    return stream.getvalue()


def read_yaml(path: Path, round_trip: bool = False) -> dict[str, Any]:
    """Read a YAML mapping (see parse), failing with the file and line on a syntax error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    return parse(text, str(path), round_trip)


def load_params(root: Path = Path(".")) -> Params:
    """Load and validate `<root>/params.yaml`, refusing (before any import) a class_path the
    workspace does not allow (squeeze.config.allowlist.check_class_paths)."""
    path = root / PARAMS_FILE
    params = validate(read_yaml(path), str(path))
    check_class_paths(params, root)
    return params


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overlay into a copy of base (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    merge_into(out, overlay)
    return out


def merge_into(doc: MutableMapping[str, Any], overlay: Mapping[str, Any]) -> None:
    """Deep-merge overlay into doc in place: mappings merge key by key, anything else replaces
    (a copy: no node is shared, so no YAML alias is written). On a round-trip document, doc's
    comments and key order stay, new keys go last and overlay's nodes bring their comments."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(doc.get(key), MutableMapping):
            merge_into(doc[key], value)
        else:
            put(doc, key, copy.deepcopy(value))


def replace(merged: dict[str, Any], overlay: dict[str, Any], dotted: str, where: Path) -> None:
    """Set merged's value at a dotted key to overlay's, whole: a profile's own candidate graph
    or network, instead of one merged key by key into params.yaml's (which would keep the
    default candidates, or mix a class_path into the built-in convnet's keys)."""
    *parents, last = dotted.split(".")
    source, target = overlay, merged
    for key in parents:
        source, target = source.get(key), target.get(key)
        if not isinstance(source, dict) or not isinstance(target, dict):
            break
    else:
        if last in source:
            put(target, last, copy.deepcopy(source[last]))
            return
    raise ParamsError(f"{where}: {REPLACE_KEY} names {dotted!r}, which the profile does not set")


def apply_profile(root: Path, profile: str) -> Params:
    """Merge profiles/<profile>.yaml into params.yaml (in place, like `dvc exp run -S`).

    Mappings merge key by key; a profile's top-level `replace:` lists dotted keys whose value
    the profile sets whole (e.g. [train_teacher.arch, prune]). params.yaml keeps its comments
    and order, and is written only when the result validates (write_document)."""
    overlay_path = root / PROFILES_DIR / f"{profile}.yaml"
    if not overlay_path.exists():
        known = sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))
        raise ParamsError(f"{overlay_path}: no such profile (known: {', '.join(known) or 'none'})")
    overlay = read_yaml(overlay_path, round_trip=True)
    whole = overlay.pop(REPLACE_KEY, None) or []
    doc = read_yaml(root / PARAMS_FILE, round_trip=True)
    merge_into(doc, overlay)
    for dotted in whole:
        replace(doc, overlay, dotted, overlay_path)
    return write_document(root, doc, f"{root / PARAMS_FILE} + {overlay_path}")


def write_document(
    root: Path, doc: dict[str, Any], where: str, expected: Params | None = None
) -> Params:
    """Write a round-trip document over `<root>/params.yaml` once what it would load as passes
    the schema and the class_path allow-list (and is `expected`, when given); its params.

    The text is checked, not the document: what is validated is what the next load_params
    reads. Atomic (a temporary file renamed over params.yaml); no write when the text is the
    file's already.
    """
    text = dump(doc)
    params = validate(parse(text, where), where)
    check_class_paths(params, root)
    if expected is not None and params != expected:  # a bug of the round trip: never written
        raise ParamsError(f"{where}: the round trip would change the params; nothing written")
    path = root / PARAMS_FILE
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return params


def current_params(path: Path) -> Params | None:
    """What params.yaml holds now; None when it does not parse or validate (the run's valid
    params then replace it rather than fail on it)."""
    try:
        return validate(read_yaml(path), str(path))
    except ParamsError:
        return None


def write_params(root: Path, params: Params) -> bool:
    """Write params to `<root>/params.yaml` unless it already holds them; True if it changed.

    Only the values that differ are rewritten (update): comments, order and the style of
    everything else stay. A file that does not parse is replaced whole."""
    path = root / PARAMS_FILE
    if path.exists() and current_params(path) == params:
        return False
    try:
        doc = read_yaml(path, round_trip=True)
    except ParamsError:  # missing or not a YAML mapping: nothing to keep
        doc = CommentedMap()
    update(doc, params.model_dump(mode="json"))
    write_document(root, doc, str(path), expected=params)
    return True


def update(doc: MutableMapping[str, Any], data: Mapping[str, Any]) -> None:
    """Make doc hold exactly data, touching only what differs: equal values keep their node
    (its comments and flow style), mappings update key by key, keys data lacks go, new keys go
    last (copies: no node is shared, so no YAML alias is written)."""
    for key in [k for k in doc if k not in data]:
        delete(doc, key)
    for key, value in data.items():
        old = doc.get(key)
        if isinstance(value, Mapping) and value and isinstance(old, MutableMapping):
            update(old, value)  # (an emptied one is replaced by `{}`, see put)
        elif key not in doc or not same(old, value):
            new = copy.deepcopy(value)
            if isinstance(new, list) and isinstance(old, CommentedSeq) and old.fa.flow_style():
                new = CommentedSeq(new)
                new.fa.set_flow_style()  # [16, 32] stays a flow list
            put(doc, key, new)


def same(old: Any, new: Any) -> bool:
    """old and new are the same plain data: == that also tells true from 1 (YAML does)."""
    if isinstance(new, Mapping):
        return (isinstance(old, Mapping) and old.keys() == new.keys()
                and all(same(old[k], new[k]) for k in new))  # fmt: skip
    if isinstance(new, list):
        return (isinstance(old, list) and len(old) == len(new)
                and all(same(a, b) for a, b in zip(old, new, strict=True)))  # fmt: skip
    return isinstance(old, bool) == isinstance(new, bool) and old == new


# Comments of a round-trip document. ruamel keeps the comment lines that follow a block (the
# next key's header, say) on the block's deepest last line, so replacing or deleting the block
# would drop them; put and delete move them to where they still come before that next key.


def put(node: MutableMapping[str, Any], key: str, value: Any) -> None:
    """node[key] = value, keeping the comment lines that followed the old value after the new."""
    following = _cut_following(node, key) if key in node else ""
    slots = node.ca.items.get(key) if isinstance(node, CommentedBase) else None
    if slots and len(slots) > 3 and not _block(value):
        # the lines between the key and its old block (its first entry's header): ruamel would
        # write them between `key:` and a scalar or `{}`, which then no longer parses
        slots[3] = None
    node[key] = value
    if following:
        _add_following(node, key, following)


def delete(node: MutableMapping[str, Any], key: str) -> None:
    """del node[key] with its own header comment (the lines before it), keeping the lines that
    followed it, the next key's header, after the entry before it (lost for a first entry)."""
    keys = list(node)
    at = keys.index(key)
    following = _cut_following(node, key)
    if at > 0:
        _cut_following(node, keys[at - 1])  # the lines between the two: key's header
    del node[key]
    if following and at > 0:
        _add_following(node, keys[at - 1], following)


def _block(value: Any) -> bool:
    """value is a non-empty block (not flow) mapping or list: its last line is its last entry's."""
    flow = isinstance(value, CommentedBase) and value.fa.flow_style()
    return isinstance(value, dict | list) and len(value) > 0 and not flow


def _last(node: Any) -> Any:
    """The key (or index) of a mapping's (or list's) last entry."""
    return next(reversed(node)) if isinstance(node, dict) else len(node) - 1


def _trailing(node: Any, key: Any) -> tuple[list, int] | None:
    """Where the comment after entry key of node is kept, (ruamel's slots, index), or None."""
    value = node[key]
    if _block(value):  # its last line is its last entry's
        return _trailing(value, _last(value)) if isinstance(value, CommentedBase) else None
    slots = node.ca.items.get(key) if isinstance(node, CommentedBase) else None
    index = 2 if isinstance(node, dict) else 0  # a mapping value's comment, a list item's
    return (slots, index) if slots and slots[index] is not None else None


def _cut_following(node: Any, key: Any) -> str:
    """Take the comment lines after entry key of node off it (its end-of-line comment stays)."""
    found = _trailing(node, key)
    if found is None:
        return ""
    slots, index = found
    eol, _, following = slots[index].value.partition("\n")
    if not following.strip():
        return ""
    if eol:
        slots[index].value = eol + "\n"
    else:
        slots[index] = None
    return following


def _add_following(node: Any, key: Any, text: str) -> None:
    """Put comment lines (indented as they were) after entry key of node: on its last line."""
    value = node[key]
    if _block(value):
        if not isinstance(value, CommentedBase):  # plain data: a node that can hold comments
            value = node[key] = (
                CommentedMap(value) if isinstance(value, dict) else CommentedSeq(value)
            )
        _add_following(value, _last(value), text)
        return
    slots = node.ca.items.setdefault(key, [None] * 4)
    index = 2 if isinstance(node, dict) else 0
    if slots[index] is None:
        slots[index] = CommentToken("\n", CommentMark(0))
    slots[index].value += text

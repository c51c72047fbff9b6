"""Decode `application/vnd.kubernetes.protobuf` request bodies into JSON-shaped dicts.

kubectl's typed clients (`create configmap`, `auth whoami`, `auth can-i`, ...) send protobuf.
Field tables come from Kubernetes' generated.proto (see protogen.py / proto_schema.json).
Answers stay JSON: client-go accepts them.
"""

from __future__ import annotations

import base64
import datetime
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

MAGIC = b"k8s\x00"
MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_META = "k8s.io.apimachinery.pkg.apis.meta.v1"
_PACKAGES = {
    "v1": "k8s.io.api.core.v1",
    "apps/v1": "k8s.io.api.apps.v1",
    "authentication.k8s.io/v1": "k8s.io.api.authentication.v1",
    "authorization.k8s.io/v1": "k8s.io.api.authorization.v1",
}
_VARINTS = {"bool", "int32", "int64", "uint32", "uint64"}
_KEEP_ZERO = {"replicas"}  # pointer fields where an explicit 0 means something


class ProtobufError(ValueError):
    pass


@cache
def schema() -> dict[str, list[list[Any]]]:
    return json.loads(Path(__file__).with_name("proto_schema.json").read_text())


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(number, wire type, raw value) for every field in a message."""
    out, pos = [], 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        out.append((num, wire, value))
    return out


def _scalar(typ: str, wire: int, raw: Any) -> Any:
    if typ == "string":
        return bytes(raw).decode("utf-8")
    if typ == "bytes":
        return base64.b64encode(bytes(raw)).decode()
    if typ == "bool":
        return bool(raw)
    if typ in ("int32", "int64"):
        return raw - (1 << 64) if raw >= 1 << 63 else raw
    if typ in ("uint32", "uint64"):
        return raw
    if typ == "double":
        return struct.unpack("<d", raw)[0]
    if typ == "float":
        return struct.unpack("<f", raw)[0]
    raise ProtobufError(f"unknown scalar {typ}")


def _timestamp(msg: dict[str, Any], micro: bool) -> str | None:
    secs, nanos = msg.get("seconds", 0), msg.get("nanos", 0)
    if not secs and not nanos:
        return None
    t = datetime.datetime.fromtimestamp(secs, datetime.UTC)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _special(typ: str, msg: dict[str, Any]) -> Any:
    """JSON forms of types with custom marshalling; `msg` is the decoded message."""
    short = typ.rsplit(".", 1)[-1]
    if typ in (f"{_META}.Time", f"{_META}.MicroTime"):
        return _timestamp(msg, short == "MicroTime")
    if short == "IntOrString":
        return msg.get("strVal", "") if msg.get("type") == 1 else msg.get("intVal", 0)
    if short == "Quantity":
        return msg.get("string", "")
    if short == "ExtraValue":
        return msg.get("items", [])
    if short in ("FieldsV1", "RawExtension"):
        raw = base64.b64decode(msg.get("Raw") or msg.get("raw") or "")
        return json.loads(raw) if raw else None
    if short == "Duration":
        return f"{msg.get('duration', 0) / 1e9:g}s"
    return msg


def _value(typ: str, wire: int, raw: Any) -> Any:
    if typ in schema():
        return _special(typ, decode_message(typ, bytes(raw)))
    return _scalar(typ, wire, raw)


def _empty(v: Any) -> bool:
    if isinstance(v, bool | int | float | str | dict | list):
        return not v
    return v is None


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    """Decode one message by its fully-qualified name, dropping empty optional fields."""
    table = {f[0]: f for f in schema().get(name, [])}
    out: dict[str, Any] = {}
    for num, wire, raw in _fields(data):
        if num not in table:
            continue
        _, field, label, typ = table[num]
        if label == "map":
            ktyp, vtyp = typ.split(",")
            entry = {n: (w, r) for n, w, r in _fields(bytes(raw))}
            k = _scalar(ktyp, *entry[1]) if 1 in entry else ""
            default: Any = "" if vtyp in ("string", "bytes") else None
            v = _value(vtyp, *entry[2]) if 2 in entry else default
            out.setdefault(field, {})[k] = v
        elif label == "rep":
            items = out.setdefault(field, [])
            if wire == 2 and typ in _VARINTS:  # packed
                pos, raw = 0, bytes(raw)
                while pos < len(raw):
                    n, pos = _varint(raw, pos)
                    items.append(_scalar(typ, 0, n))
            else:
                items.append(_value(typ, wire, raw))
        else:
            out[field] = _value(typ, wire, raw)
    return {k: v for k, v in out.items() if not _empty(v) or k in _KEEP_ZERO}


def decode(body: bytes) -> dict[str, Any]:
    """A `k8s\\0`-prefixed runtime.Unknown envelope -> the object as JSON would carry it."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing k8s protobuf magic prefix")
    envelope = {n: r for n, _, r in _fields(body[len(MAGIC):])}
    type_meta = {n: bytes(r).decode() for n, _, r in _fields(bytes(envelope.get(1, b"")))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    pkg = _META if kind == "DeleteOptions" else _PACKAGES.get(api_version)
    name = f"{pkg}.{kind}"
    if pkg is None or name not in schema():
        raise ProtobufError(f"no protobuf schema for {api_version}/{kind}")
    obj = decode_message(name, bytes(envelope.get(2, b"")))
    return {"kind": kind, "apiVersion": api_version, **obj}

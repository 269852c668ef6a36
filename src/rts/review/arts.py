"""Confirmed RTS as an ARTS-compatible GeoJSON, and a validator against the ARTS field list.

ARTS (Yang et al. 2025, github.com/whrc/ARTS) stores RTS outlines as a GeoJSON FeatureCollection in
EPSG:3413 (the legacy ``crs`` member ``urn:ogc:def:crs:EPSG::3413``) with every attribute a string or
null. Its fields and which are required are defined in ``Metadata_Format_Summary.csv`` (a copy is in
``../shared/data/arts/``); :data:`FIELDS` repeats that list so writing needs no copy of it, and
:func:`validate` checks a file against whichever field list it is given.

``UID``: the field list says uuid5 of the required fields concatenated as one string; it does not
name the uuid5 namespace, so this project uses :data:`UID_NAMESPACE` (``uuid.NAMESPACE_URL``).
"""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

ARTS_CRS = "urn:ogc:def:crs:EPSG::3413"
UID_NAMESPACE = uuid.NAMESPACE_URL
FIELD_LIST_FILE = "Metadata_Format_Summary.csv"

# (name, required) in the order of Metadata_Format_Summary.csv; "Generated" fields are filled here
FIELDS: tuple[tuple[str, str], ...] = (
    ("CentroidLat", "True"), ("CentroidLon", "True"), ("RegionName", "True"), ("CreatorLab", "True"),
    ("BaseMapDate", "True"), ("BaseMapSource", "True"), ("BaseMapResolution", "True"), ("TrainClass", "True"),
    ("LabelType", "True"), ("MergedRTS", "Generated"), ("SplitRTS", "Generated"), ("NewRTS", "Generated"),
    ("StabilizedRTS", "Generated"), ("UnknownRelationship", "Generated"), ("ContributionDate", "Generated"),
    ("UID", "Generated"), ("BaseMapID", "False"), ("Area", "False"), ("Notes", "False"),
)
REQUIRED = tuple(name for name, req in FIELDS if req == "True")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def arts_uid(properties: Mapping[str, object]) -> str:
    """uuid5 of the required fields' values concatenated as one string, in field-list order."""
    return str(uuid.uuid5(UID_NAMESPACE, "".join(str(properties[name]) for name in REQUIRED)))


def feature(geometry: dict, *, lat: float, lon: float, region: str, creator_lab: str, base_map_date: str,
            base_map_source: str, base_map_resolution: float, contribution_date: str, area_m2: float,
            base_map_id: str | None = None, notes: str | None = None) -> dict:
    """One ARTS feature (``TrainClass`` Positive, ``LabelType`` Polygon); values as strings, as ARTS has them."""
    props: dict[str, str | None] = {
        "CentroidLat": f"{lat:.5f}", "CentroidLon": f"{lon:.5f}", "RegionName": region, "CreatorLab": creator_lab,
        "BaseMapDate": base_map_date, "BaseMapSource": base_map_source, "BaseMapResolution": f"{base_map_resolution:g}",
        "TrainClass": "Positive", "LabelType": "Polygon", "MergedRTS": None, "SplitRTS": None, "NewRTS": None,
        "StabilizedRTS": None, "UnknownRelationship": None, "ContributionDate": contribution_date, "UID": None,
        "BaseMapID": base_map_id, "Area": f"{area_m2:.1f}", "Notes": notes,
    }
    props["UID"] = arts_uid(props)
    return {"type": "Feature", "properties": props, "geometry": geometry}


def feature_collection(features: Sequence[dict], name: str = "rts_confirmed") -> dict:
    return {"type": "FeatureCollection", "name": name, "crs": {"type": "name", "properties": {"name": ARTS_CRS}},
            "features": list(features)}


def read_field_list(path: str | Path) -> list[dict[str, str]]:
    """The rows (FieldName, Format, Required, Description) of an ARTS ``Metadata_Format_Summary.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def validate(collection: Mapping, field_list: Sequence[Mapping[str, str]]) -> list[str]:
    """Every way ``collection`` departs from the ARTS format and ``field_list``; empty when it conforms.

    Checked: the EPSG:3413 ``crs`` member; Polygon/MultiPolygon geometry; every listed field present
    and no other; required fields non-empty; values strings or null; the formats the list states
    (decimal degrees to 5 places, YYYY-MM-DD dates, numbers, TrainClass Positive/Negative, a UID of
    36 characters that is the uuid5 of the required fields).
    """
    problems: list[str] = []
    crs = ((collection.get("crs") or {}).get("properties") or {}).get("name")
    if crs != ARTS_CRS:
        problems.append(f"crs is {crs!r}, expected {ARTS_CRS!r}")
    names = [row["FieldName"] for row in field_list]
    required = [row["FieldName"] for row in field_list if row["Required"].strip() == "True"]
    formats = {row["FieldName"]: row["Format"] for row in field_list}
    for i, feat in enumerate(collection.get("features") or []):
        where = f"feature {i}"
        geom = feat.get("geometry") or {}
        if geom.get("type") not in ("Polygon", "MultiPolygon"):
            problems.append(f"{where}: geometry {geom.get('type')!r}, expected Polygon or MultiPolygon")
        props = feat.get("properties") or {}
        missing = [n for n in names if n not in props]
        extra = [n for n in props if n not in names]
        if missing:
            problems.append(f"{where}: missing fields {missing}")
        if extra:
            problems.append(f"{where}: fields not in the ARTS list {extra}")
        for n in required:
            if props.get(n) in (None, ""):
                problems.append(f"{where}: required field {n} is empty")
        for n, v in props.items():
            if v is None:
                continue
            if not isinstance(v, str):
                problems.append(f"{where}: {n} is {type(v).__name__}, ARTS stores strings")
                continue
            fmt = formats.get(n, "")
            if fmt == "Decimal Degrees" and not re.fullmatch(r"-?\d+\.\d{5}", v):
                problems.append(f"{where}: {n}={v!r} is not decimal degrees to 5 places")
            elif fmt == "Number":
                try:
                    float(v)
                except ValueError:
                    problems.append(f"{where}: {n}={v!r} is not a number")
            elif n in ("BaseMapDate", "ContributionDate") and not all(_DATE.match(d.strip()) for d in v.split(",")):
                problems.append(f"{where}: {n}={v!r} is not YYYY-MM-DD (a range separated by a comma)")
        if props.get("TrainClass") not in (None, "Positive", "Negative"):
            problems.append(f"{where}: TrainClass={props.get('TrainClass')!r}, expected Positive or Negative")
        uid = props.get("UID")
        if isinstance(uid, str):
            if not _UID.match(uid):
                problems.append(f"{where}: UID={uid!r} is not a 36-character uuid")
            elif all(props.get(n) is not None for n in REQUIRED) and uid != arts_uid(props):
                problems.append(f"{where}: UID is not the uuid5 of the required fields")
    return problems

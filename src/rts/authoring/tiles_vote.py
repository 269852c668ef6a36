"""Majority vote of several experts' RTS polygons, done on the vectors (no raster in between).

The union of all experts' boundaries cuts the plane into faces; each face is inside or outside
every expert's outline as a whole, so counting the experts that contain one interior point of a
face counts the votes of all of it. Faces with more than half of the votes form the majority.
"""

from __future__ import annotations

from pathlib import Path

import shapely

from rts.authoring.tiles_sources import read_geometries
from rts.io import POSITIVE, atomic_path


def vote_counts(experts: list[list[shapely.Geometry]]) -> list[tuple[shapely.Polygon, int]]:
    """Faces of the overlay of all experts' polygons with the number of experts covering each."""
    outlines = [shapely.union_all([shapely.make_valid(g) for g in polys]) if polys else shapely.Polygon() for polys in experts]
    lines = shapely.union_all([o.boundary for o in outlines if not o.is_empty])
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(lines)))
    out = []
    for face in faces:
        p = face.point_on_surface()
        out.append((face, sum(bool(o.covers(p)) for o in outlines)))
    return out


def majority_polygons(
    experts: list[list[shapely.Geometry]], min_votes: int | None = None, min_area: float = 1.0
) -> list[shapely.Polygon]:
    """RTS outlines covered by at least ``min_votes`` experts (default: more than half of them).

    Args:
        experts: one list of polygons per expert, all in one CRS.
        min_votes: votes needed; default ``len(experts) // 2 + 1`` (strict majority).
        min_area: parts smaller than this (slivers between near-identical outlines) are dropped.

    Returns:
        The connected parts of the majority area, largest first.
    """
    need = len(experts) // 2 + 1 if min_votes is None else min_votes
    merged = shapely.union_all([f for f, n in vote_counts(experts) if n >= need])
    parts = [p for p in shapely.get_parts(merged) if p.geom_type == "Polygon" and p.area >= min_area]
    return sorted(parts, key=lambda p: -p.area)


def read_experts(paths: list[Path]) -> list[list[shapely.Geometry]]:
    """Each expert's polygons, reprojected to EPSG:3413."""
    return [read_geometries(p)[0] for p in paths]


def write_polygons(path: Path, geoms: list[shapely.Geometry], uids: list[str], region: str, crs: str = "EPSG:3413") -> None:
    """Write polygons with ARTS-style ``UID``, ``RegionName``, ``TrainClass`` attributes (atomic).

    The driver follows the suffix (``.geojson``, ``.gpkg``, ``.shp``).
    """
    import numpy as np
    import pyogrio.raw

    fields = [np.array(uids, dtype=object), np.array([region] * len(geoms), dtype=object), np.array([POSITIVE] * len(geoms), dtype=object)]
    with atomic_path(path) as tmp:
        tmp.unlink()  # OGR refuses to overwrite the empty placeholder
        pyogrio.raw.write(
            tmp, shapely.to_wkb(np.array(geoms, dtype=object)), fields, fields=["UID", "RegionName", "TrainClass"],
            geometry_type="Polygon", crs=crs,
        )

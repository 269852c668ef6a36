"""Dataset authoring: the synthetic RTS generator (`rts synth`) and the builder of training tiles
from scenes and expert polygons (`rts tiles`). These write datasets in the on-disk format; no
pipeline stage loads them, so an edit here never makes a trained model stale."""
